// tool-schema.ts: renders tool definitions (JSON Schema parameters) as the TypeScript-like declarations the
// harmony format puts in system/developer messages, e.g.
//
//   // Gets the current weather in the provided location.
//   type get_current_weather = (_: {
//   // The city and state, e.g. San Francisco, CA
//   location: string,
//   format?: "celsius" | "fahrenheit", // default: celsius
//   }) => any;
//
// Rules (written from the rendered examples of the format): a property's title, description and examples come
// as `//` comment lines above it (a title is separated from what follows by a bare `//`); optional properties
// (not in `required`) get `?`; `nullable` adds `| null`; a default goes in a trailing `// default: ...` comment
// (enum defaults bare, other values as JSON); oneOf/anyOf properties list one variant per line.

/** The subset of JSON Schema that the harmony tool declarations render. */
export interface JsonSchema {
  type?: string | string[];
  description?: string;
  title?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  enum?: unknown[];
  default?: unknown;
  examples?: unknown[];
  nullable?: boolean;
  oneOf?: JsonSchema[];
  anyOf?: JsonSchema[];
  [key: string]: unknown;
}

/** One tool (function) of a namespace. */
export interface ToolDescription {
  name: string;
  description: string;
  /** JSON Schema of the single argument object; absent (or without properties) renders `() => any`. */
  parameters?: JsonSchema;
}

/** A tool namespace (`functions`, `browser`, `python`...). */
export interface ToolNamespace {
  name: string;
  /** Rendered as `//` comment lines above the namespace block, or as plain text when there are no tools. */
  description?: string;
  tools: ToolDescription[];
}

function commentLines(text: string): string[] {
  return text.split('\n').map((l) => `// ${l}`);
}

function formatDefault(value: unknown, schema: JsonSchema): string {
  if (schema.enum !== undefined && typeof value === 'string') return value;
  return JSON.stringify(value);
}

/** The type expression of a schema (objects render inline over several lines). */
export function schemaType(schema: JsonSchema): string {
  const variants = schema.oneOf ?? schema.anyOf;
  if (variants) return variants.map((v) => schemaType(v)).join(' | ');
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(' | ');
  if (Array.isArray(schema.type)) return schema.type.map((t) => schemaType({ ...schema, type: t })).join(' | ');
  switch (schema.type) {
    case 'string':
      return 'string';
    case 'number':
    case 'integer':
      return 'number';
    case 'boolean':
      return 'boolean';
    case 'null':
      return 'null';
    case 'array': {
      if (!schema.items) return 'any[]';
      const inner = schemaType(schema.items);
      return inner.includes('|') ? `(${inner})[]` : `${inner}[]`;
    }
    case 'object':
      if (schema.properties && Object.keys(schema.properties).length > 0) return `{\n${objectBody(schema)}}`;
      return 'object';
    default:
      return 'any';
  }
}

function propertyLines(name: string, schema: JsonSchema, required: boolean): string[] {
  const lines: string[] = [];
  const opt = required ? '' : '?';
  if (schema.title !== undefined) {
    lines.push(`// ${schema.title}`);
    if (schema.description !== undefined || schema.examples !== undefined) lines.push('//');
  }
  if (schema.description !== undefined) lines.push(...commentLines(schema.description));
  if (schema.examples !== undefined && schema.examples.length > 0) {
    lines.push('// Examples:');
    for (const ex of schema.examples) lines.push(`// - ${JSON.stringify(ex)}`);
  }
  const variants = schema.oneOf ?? schema.anyOf;
  if (variants) {
    if (schema.default !== undefined) lines.push(`// default: ${formatDefault(schema.default, schema)}`);
    lines.push(`${name}${opt}:`);
    for (const v of variants) {
      let line = ` | ${schemaType(v)}${v.nullable ? ' | null' : ''}`;
      if (v.default !== undefined) line += ` // default: ${formatDefault(v.default, v)}`;
      else if (v.description !== undefined) line += ` // ${v.description}`;
      lines.push(line);
    }
    lines.push(',');
    return lines;
  }
  let line = `${name}${opt}: ${schemaType(schema)}${schema.nullable ? ' | null' : ''},`;
  if (schema.default !== undefined) line += ` // default: ${formatDefault(schema.default, schema)}`;
  lines.push(line);
  return lines;
}

function objectBody(schema: JsonSchema): string {
  const required = new Set(schema.required ?? []);
  let body = '';
  for (const [name, prop] of Object.entries(schema.properties ?? {})) {
    for (const l of propertyLines(name, prop, required.has(name))) body += `${l}\n`;
  }
  return body;
}

/** `// description\ntype name = (_: {...}) => any;` */
export function renderTool(tool: ToolDescription): string {
  let out = tool.description ? `${commentLines(tool.description).join('\n')}\n` : '';
  const p = tool.parameters;
  if (!p || !p.properties || Object.keys(p.properties).length === 0) {
    return `${out}type ${tool.name} = () => any;`;
  }
  const head = p.description !== undefined ? `(_: // ${p.description}\n{` : '(_: {';
  out += `type ${tool.name} = ${head}\n${objectBody(p)}}) => any;`;
  return out;
}

/** `## name\n\n...namespace name {\n\n...} // namespace name` */
export function renderToolNamespace(ns: ToolNamespace): string {
  let out = `## ${ns.name}\n\n`;
  if (ns.tools.length === 0) return out + (ns.description ?? '');
  if (ns.description) out += `${commentLines(ns.description).join('\n')}\n`;
  out += `namespace ${ns.name} {\n\n`;
  for (const t of ns.tools) out += `${renderTool(t)}\n\n`;
  return `${out}} // namespace ${ns.name}`;
}
