import { pino, type DestinationStream, type Logger as PinoLogger } from 'pino';

/**
 * Structured JSON logs, one line per event. `scope()` returns a child logger carrying fields
 * (`{ jobId, jobType }`, `{ supervisorId }`) on every line it writes.
 */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  scope(fields: Record<string, unknown>): Logger;
}

export interface LoggerOptions {
  /** @defaultValue `$LOG_LEVEL` or `"info"` */
  level?: string;
  /** Where lines go. @defaultValue stdout */
  destination?: DestinationStream;
}

/**
 * Scoped fields are merged here rather than bound with pino's `child()`: a child that binds a key
 * its parent bound too (a `component` inside a `component`) writes the key twice in one JSON line,
 * and JSON readers keep only one of them. Later scopes and per-line fields win.
 */
function wrap(p: PinoLogger, bound: Record<string, unknown> = {}): Logger {
  const at = (level: 'debug' | 'info' | 'warn' | 'error') => (msg: string, fields?: Record<string, unknown>) => {
    if (p.isLevelEnabled(level)) p[level](fields ? { ...bound, ...fields } : bound, msg);
  };
  return {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    scope: (fields) => wrap(p, { ...bound, ...fields }),
  };
}

export function makeLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? process.env.LOG_LEVEL ?? 'info';
  const p = options.destination
    ? pino({ level, base: { pid: process.pid } }, options.destination)
    : pino({ level, base: { pid: process.pid } });
  return wrap(p);
}

/** A logger that drops everything, for library callers that pass none. */
export const silentLogger: Logger = makeLogger({ level: 'silent' });
