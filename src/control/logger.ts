// Structured logs (pino, JSON lines on stderr): control-plane events only. The packet path never logs, so a
// packet flood cannot become a log flood at any level.
import { pino, type Logger } from 'pino';
import { LOG_LEVELS, type LogConfig, type LogLevel } from './run-config.js';

export type { Logger } from 'pino';

/** The level to use: MPLB_LOG_LEVEL wins over the config (so a unit file can turn on debug without an edit). */
export function logLevel(cfg: LogConfig | undefined, env: NodeJS.ProcessEnv = process.env): LogLevel {
  const e = env.MPLB_LOG_LEVEL?.trim().toLowerCase();
  if (e) {
    if (!(LOG_LEVELS as readonly string[]).includes(e)) throw Object.assign(new Error(`MPLB_LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(e)}`), { code: 'ECONFIG' });
    return e as LogLevel;
  }
  return cfg?.level ?? 'info';
}

export interface LoggerOptions {
  level: LogLevel;
  /** Where lines go; default stderr (stdout carries --control-stdin answers). */
  destination?: NodeJS.WritableStream | number;
}

export function createLogger(opts: LoggerOptions): Logger {
  // Synchronous writes: few lines, and none lost when the process exits right after logging.
  const dest = typeof opts.destination === 'object' ? opts.destination : pino.destination({ dest: opts.destination ?? 2, sync: true });
  return pino({ level: opts.level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } }, dest);
}

/** A logger that drops everything (tests and library use). */
export const silentLogger: Logger = pino({ level: 'silent' });
