// calculator.ts: a safe arithmetic evaluator for the calculator tool the model calls (GSM8K with tools).
//
// The model's expression is untrusted text: it is tokenized and parsed here by a small recursive-descent parser
// and evaluated on plain numbers; nothing is ever handed to eval / Function / a JS parser. Everything is bounded
// so that a hostile or runaway expression costs microseconds and gets a clear error string back:
//   - input length (MAX_EXPRESSION_CHARS), nesting depth (MAX_DEPTH), number of tokens (MAX_TOKENS);
//   - every intermediate value's magnitude (MAX_MAGNITUDE), and exponents (integer, |e| <= MAX_EXPONENT);
//   - division and modulo by zero are errors, as is any non-finite result.
//
// Grammar (Python-like precedence: `**` binds tighter than unary minus on its left, and is right-associative,
// so -2**2 = -4 and 2**3**2 = 2**9):
//   expr    := term (('+' | '-') term)*
//   term    := unary (('*' | '/' | '%') unary)*
//   unary   := ('+' | '-') unary | power
//   power   := primary ('**' unary)?
//   primary := number | '(' expr ')'
//   number  := digits ['.' digits] | '.' digits          (no exponents, no thousands separators)
// `^` and `×`/`÷` are refused with a hint (`**`, `*`, `/`), since models write them and silently treating `^` as
// XOR would be wrong. A result is printed as an integer when it is one, else rounded to 12 significant digits.

import { ToolError, type Tool } from './tool.ts';

export const MAX_EXPRESSION_CHARS = 256;
export const MAX_TOKENS = 128;
export const MAX_DEPTH = 32;
export const MAX_MAGNITUDE = 1e15;
export const MAX_EXPONENT = 64;

export type CalcResult = { ok: true; value: number; text: string } | { ok: false; error: string };

type Tok = { kind: 'num'; value: number; at: number } | { kind: 'op'; op: string; at: number } | { kind: 'end'; at: number };

/** A parse or evaluation error (its message is what the model sees). */
class CalcError extends Error {}

function tokenize(src: string): Tok[] {
  const toks: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (c === ' ' || c === '\t' || c === '\n') {
      i++;
      continue;
    }
    if ((c >= '0' && c <= '9') || c === '.') {
      const start = i;
      while (i < src.length && src[i]! >= '0' && src[i]! <= '9') i++;
      if (src[i] === '.') {
        i++;
        while (i < src.length && src[i]! >= '0' && src[i]! <= '9') i++;
      }
      const text = src.slice(start, i);
      if (text === '.') throw new CalcError(`a lone '.' at position ${start} is not a number`);
      if (src[i] === ',' && /^\d{3}/.test(src.slice(i + 1))) {
        throw new CalcError(`thousands separators are not allowed at position ${i}: write 1000, not 1,000`);
      }
      if (src[i] === '.') throw new CalcError(`a number has two decimal points at position ${i}`);
      if (src[i] === 'e' || src[i] === 'E') throw new CalcError(`exponent notation is not allowed at position ${i}: write the number out or use **`);
      const value = Number(text);
      if (!Number.isFinite(value) || Math.abs(value) > MAX_MAGNITUDE) throw new CalcError(`the number ${text.slice(0, 24)} is larger than ${MAX_MAGNITUDE}`);
      toks.push({ kind: 'num', value, at: start });
    } else if (c === '*' && src[i + 1] === '*') {
      toks.push({ kind: 'op', op: '**', at: i });
      i += 2;
    } else if ('+-*/%()'.includes(c)) {
      toks.push({ kind: 'op', op: c, at: i });
      i++;
    } else if (c === '^') {
      throw new CalcError(`'^' at position ${i} is not supported: use ** for powers`);
    } else if (c === '×' || c === '÷') {
      throw new CalcError(`'${c}' at position ${i} is not supported: use ${c === '×' ? '*' : '/'}`);
    } else {
      const shown = JSON.stringify(src.slice(i, i + 12));
      throw new CalcError(`unexpected character ${JSON.stringify(c)} at position ${i} (near ${shown}): only numbers, + - * / % ** and parentheses are allowed`);
    }
    if (toks.length > MAX_TOKENS) throw new CalcError(`the expression has more than ${MAX_TOKENS} tokens`);
  }
  toks.push({ kind: 'end', at: src.length });
  return toks;
}

function checked(v: number, what: string): number {
  if (!Number.isFinite(v)) throw new CalcError(`${what} is not a finite number`);
  if (Math.abs(v) > MAX_MAGNITUDE) throw new CalcError(`${what} exceeds the magnitude limit ${MAX_MAGNITUDE}`);
  return v;
}

class Parser {
  private pos = 0;
  private depth = 0;
  constructor(private readonly toks: Tok[]) {}

  private peekOp(): string | null {
    const t = this.toks[this.pos]!;
    return t.kind === 'op' ? t.op : null;
  }

  parse(): number {
    if (this.toks[0]!.kind === 'end') throw new CalcError('the expression is empty');
    const v = this.expr();
    const t = this.toks[this.pos]!;
    if (t.kind !== 'end') throw new CalcError(`unexpected ${t.kind === 'op' ? `'${t.op}'` : `number ${t.value}`} at position ${t.at}`);
    return v;
  }

  private enter(): void {
    if (++this.depth > MAX_DEPTH) throw new CalcError(`the expression is nested deeper than ${MAX_DEPTH} levels`);
  }

  private expr(): number {
    this.enter();
    let v = this.term();
    for (let op = this.peekOp(); op === '+' || op === '-'; op = this.peekOp()) {
      this.pos++;
      const r = this.term();
      v = checked(op === '+' ? v + r : v - r, 'an intermediate result');
    }
    this.depth--;
    return v;
  }

  private term(): number {
    let v = this.unary();
    for (let op = this.peekOp(); op === '*' || op === '/' || op === '%'; op = this.peekOp()) {
      this.pos++;
      const r = this.unary();
      if ((op === '/' || op === '%') && r === 0) throw new CalcError(op === '/' ? 'division by zero' : 'modulo by zero');
      // % is the mathematical (floored) modulo, as in Python: the result has the divisor's sign.
      v = checked(op === '*' ? v * r : op === '/' ? v / r : v - r * Math.floor(v / r), 'an intermediate result');
    }
    return v;
  }

  private unary(): number {
    const op = this.peekOp();
    if (op === '-' || op === '+') {
      this.enter();
      this.pos++;
      const v = this.unary();
      this.depth--;
      return op === '-' ? -v : v;
    }
    return this.power();
  }

  private power(): number {
    const base = this.primary();
    if (this.peekOp() !== '**') return base;
    this.pos++;
    this.enter();
    const e = this.unary();
    this.depth--;
    if (!Number.isInteger(e) || Math.abs(e) > MAX_EXPONENT) throw new CalcError(`exponents must be integers between -${MAX_EXPONENT} and ${MAX_EXPONENT}, got ${e}`);
    if (base === 0 && e < 0) throw new CalcError('zero to a negative power (division by zero)');
    return checked(base ** e, 'a power');
  }

  private primary(): number {
    const t = this.toks[this.pos]!;
    if (t.kind === 'num') {
      this.pos++;
      return t.value;
    }
    if (t.kind === 'op' && t.op === '(') {
      this.pos++;
      const v = this.expr();
      const close = this.toks[this.pos]!;
      if (close.kind !== 'op' || close.op !== ')') throw new CalcError(`missing ')' for the '(' at position ${t.at}`);
      this.pos++;
      return v;
    }
    if (t.kind === 'end') throw new CalcError('the expression ends where a number was expected');
    throw new CalcError(`expected a number or '(' at position ${t.at}, got '${t.op}'`);
  }
}

/** The text of a result: an integer as such, else 12 significant digits without trailing zeros (0.1+0.2 -> 0.3). */
export function formatNumber(v: number): string {
  if (Object.is(v, -0)) return '0';
  if (Number.isInteger(v)) return String(v);
  const s = v.toPrecision(12);
  return String(Number(s));
}

/** Evaluates an arithmetic expression safely; never throws. */
export function evaluateExpression(expression: string): CalcResult {
  if (typeof expression !== 'string') return { ok: false, error: 'the expression must be a string' };
  if (expression.length > MAX_EXPRESSION_CHARS) {
    return { ok: false, error: `the expression has ${expression.length} characters; at most ${MAX_EXPRESSION_CHARS} are allowed` };
  }
  try {
    const value = new Parser(tokenize(expression)).parse();
    checked(value, 'the result');
    return { ok: true, value, text: formatNumber(value) };
  } catch (e) {
    if (e instanceof CalcError) return { ok: false, error: e.message };
    throw e;
  }
}

/** The calculator as a function tool: `{"expression": "3 * (4 + 5)"}` -> `27`. */
export const calculatorTool: Tool = {
  name: 'calculator',
  description: 'Evaluates an arithmetic expression with + - * / % ** and parentheses, and returns the result.',
  parameters: {
    type: 'object',
    properties: { expression: { type: 'string', description: 'The expression, e.g. 12 * (3 + 4) / 2' } },
    required: ['expression'],
  },
  run(args) {
    const e = args.expression;
    if (typeof e !== 'string') throw new ToolError('calculator needs {"expression": "<arithmetic>"} with a string expression');
    const r = evaluateExpression(e);
    if (!r.ok) throw new ToolError(r.error);
    return r.text;
  },
};
