// Lists the CPU-backend sources for binding.gyp (the same folders CMakeLists.txt globs), space separated.
import { readdirSync } from 'node:fs';
const dirs = ['native/common', 'native/cpu', 'native/bindings'];
const files = dirs.flatMap((d) =>
  readdirSync(new URL(`../${d}`, import.meta.url))
    .filter((f) => f.endsWith('.cc'))
    .sort()
    .map((f) => `${d}/${f}`),
);
process.stdout.write(files.join(' '));
