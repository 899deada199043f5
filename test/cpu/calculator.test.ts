// The calculator tool's safe evaluator (src/tools/calculator.ts) on a table of expressions: arithmetic and
// precedence, formatting, malformed input, hostile input (code, huge numbers, deep nesting, long strings), and
// runToolCall's handling of bad calls and timeouts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evaluateExpression, calculatorTool, MAX_EXPRESSION_CHARS, runToolCall, ToolError, type Tool } from '../../src/tools/index.ts';

const ok: Array<[string, string]> = [
  ['1 + 2', '3'],
  ['2 + 3 * 4', '14'],
  ['(2 + 3) * 4', '20'],
  ['10 / 4', '2.5'],
  ['7 % 3', '1'],
  ['-7 % 3', '2'], // floored modulo, as Python
  ['-3 + 5', '2'],
  ['--3', '3'],
  ['-(2 + 3)', '-5'],
  ['2 ** 10', '1024'],
  ['-2 ** 2', '-4'], // ** binds tighter than the unary minus on its left
  ['2 ** -1', '0.5'],
  ['2 ** 3 ** 2', '512'], // right-associative
  ['0.1 + 0.2', '0.3'],
  ['.5 * 4', '2'],
  ['3.', '3'],
  ['1 / 3', '0.333333333333'],
  ['  12*(3+4)/2 ', '42'],
  ['48 / 2 + 48', '72'],
  ['-0', '0'],
  ['999999999999999', '999999999999999'],
];

const bad: Array<[string, RegExp]> = [
  ['', /empty/],
  ['   ', /empty/],
  ['1 +', /ends where a number was expected/],
  ['(1 + 2', /missing '\)'/],
  ['1 + 2)', /unexpected '\)'/],
  ['1 2', /unexpected number 2/],
  ['* 3', /expected a number or '\('/],
  ['1 / 0', /division by zero/],
  ['5 % 0', /modulo by zero/],
  ['0 ** -1', /zero to a negative power/],
  ['2 ^ 3', /use \*\* for powers/],
  ['3 × 4', /use \*/],
  ['1,000 + 1', /thousands separators/],
  ['1.2.3', /two decimal points/],
  ['1e5', /exponent notation/],
  ['.', /lone '\.'/],
  ['2 ** 0.5', /exponents must be integers/],
  ['2 ** 100', /exponents must be integers between -64 and 64/],
  ['10 ** 16', /magnitude limit/],
  ['99999999 * 99999999', /magnitude limit/],
  ['1234567890123456789', /larger than/],
  // Code and other text never reaches a JS parser.
  ['process.exit(1)', /unexpected character "p"/],
  ['constructor.constructor("return 1")()', /unexpected character "c"/],
  ['1; while(true){}', /unexpected character ";"/],
  ['`${1}`', /unexpected character "`"/],
  ['0x10', /unexpected character "x"/],
  ['Infinity', /unexpected character "I"/],
  ['NaN', /unexpected character "N"/],
  ['1 + \u0000', /unexpected character/],
];

test('calculator: arithmetic, precedence and formatting', () => {
  for (const [e, want] of ok) {
    const r = evaluateExpression(e);
    assert.ok(r.ok, `${JSON.stringify(e)}: ${r.ok ? '' : r.error}`);
    assert.equal(r.text, want, JSON.stringify(e));
  }
});

test('calculator: malformed and malicious expressions give a clear error, never a value or an exception', () => {
  for (const [e, re] of bad) {
    const r = evaluateExpression(e);
    assert.ok(!r.ok, `${JSON.stringify(e)} should fail, got ${r.ok ? r.text : ''}`);
    assert.match(r.error, re, JSON.stringify(e));
    assert.ok(!r.error.includes('\n') && r.error.length < 200, `one short line: ${r.error}`);
  }
});

test('calculator: oversized input (length, tokens, nesting depth) is refused quickly', () => {
  const t0 = performance.now();
  const long = '1+'.repeat(5000) + '1';
  assert.match((evaluateExpression(long) as { error: string }).error, new RegExp(`at most ${MAX_EXPRESSION_CHARS}`));
  assert.match((evaluateExpression('1+'.repeat(100) + '1') as { error: string }).error, /more than 128 tokens/);
  assert.match((evaluateExpression('('.repeat(40) + '1' + ')'.repeat(40)) as { error: string }).error, /nested deeper than 32/);
  assert.match((evaluateExpression('-'.repeat(60) + '1') as { error: string }).error, /nested deeper than 32/);
  assert.match((evaluateExpression('2**'.repeat(40) + '2') as { error: string }).error, /nested deeper|exponents must be/);
  assert.equal((evaluateExpression('('.repeat(20) + '7' + ')'.repeat(20)) as { text: string }).text, '7');
  assert.ok(performance.now() - t0 < 500, 'bounded inputs are cheap');
  assert.equal(evaluateExpression(42 as unknown as string).ok, false);
});

test('calculator tool through runToolCall: results, bad arguments, unknown tools, thrown errors and timeouts', async () => {
  const tools = [calculatorTool];
  assert.deepEqual(await runToolCall(tools, 'functions.calculator', '{"expression": "6 * 7"}', 1000), { author: 'functions.calculator', text: '42', ok: true, timedOut: false });
  const badExpr = await runToolCall(tools, 'functions.calculator', '{"expression": "6 /"}', 1000);
  assert.equal(badExpr.ok, false);
  assert.match(badExpr.text, /^error: the expression ends where a number was expected$/);
  assert.match((await runToolCall(tools, 'functions.calculator', '{"expression": 3}', 1000)).text, /^error: calculator needs \{"expression"/);
  assert.match((await runToolCall(tools, 'functions.calculator', '{expression: 3', 1000)).text, /^error: the arguments are not valid JSON/);
  assert.match((await runToolCall(tools, 'functions.calculator', '[1, 2]', 1000)).text, /^error: the arguments must be a JSON object$/);
  assert.match((await runToolCall(tools, 'functions.python', '{}', 1000)).text, /^error: unknown tool "functions.python"; available: functions.calculator$/);
  assert.match((await runToolCall(tools, 'browser.search', '{}', 1000)).text, /unknown tool/);

  const throws: Tool = { name: 'boom', description: '', parameters: {}, run: () => { throw new TypeError('kaput'); } };
  const rejects: Tool = { name: 'nope', description: '', parameters: {}, run: async () => { throw new ToolError('no such key'); } };
  let aborted = false;
  const hangs: Tool = {
    name: 'slow',
    description: '',
    parameters: {},
    run: (_a, signal) => new Promise<string>((res) => signal.addEventListener('abort', () => { aborted = true; res('late'); })),
  };
  const all = [throws, rejects, hangs];
  assert.equal((await runToolCall(all, 'functions.boom', '{}', 1000)).text, 'error: functions.boom failed: kaput');
  assert.equal((await runToolCall(all, 'functions.nope', '', 1000)).text, 'error: no such key');
  const slow = await runToolCall(all, 'functions.slow', '{}', 30);
  assert.deepEqual(slow, { author: 'functions.slow', text: 'error: functions.slow timed out after 30 ms', ok: false, timedOut: true });
  assert.ok(aborted, 'the tool was told to stop');
});
