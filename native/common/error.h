// error.h: one exception type for the whole addon. Bindings turn it into a JS Error whose message names the
// op and the shapes, so nothing aborts the process.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace gptoss {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& m) : std::runtime_error(m) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... R>
void append(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

template <typename... A>
[[noreturn]] void fail(const A&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  throw Error(os.str());
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); i++) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

}  // namespace gptoss

// GPTOSS_CHECK(cond, "op: ", "message ", value, ...) throws gptoss::Error with the concatenated message.
#define GPTOSS_CHECK(cond, ...)              \
  do {                                       \
    if (!(cond)) ::gptoss::fail(__VA_ARGS__); \
  } while (0)
