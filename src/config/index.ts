export * from './schema.ts';
export * from './overrides.ts';
export * from './load.ts';
