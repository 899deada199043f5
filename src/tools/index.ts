// Function tools for multi-turn environments (see docs/training.md, "Multi-turn and tools").
export { ToolError, runToolCall, functionsToolNamespace, type Tool, type ToolCallResult } from './tool.ts';
export { evaluateExpression, formatNumber, calculatorTool, MAX_EXPRESSION_CHARS, MAX_TOKENS, MAX_DEPTH, MAX_MAGNITUDE, MAX_EXPONENT, type CalcResult } from './calculator.ts';
