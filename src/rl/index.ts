export * from './advantages.ts';
export * from './loss.ts';
