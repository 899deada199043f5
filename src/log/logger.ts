// logger.ts: the project's pino logger. Level from GPTOSS_LOG_LEVEL (default info); pretty enough on a TTY
// without extra dependencies (pino's JSON lines otherwise).
import { pino, type Logger } from 'pino';

export const log: Logger = pino({
  name: 'gptoss',
  level: process.env.GPTOSS_LOG_LEVEL ?? 'info',
  base: undefined,
});

export function childLogger(component: string): Logger {
  return log.child({ component });
}
