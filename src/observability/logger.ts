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

function wrap(p: PinoLogger): Logger {
  return {
    debug: (msg, fields) => p.debug(fields ?? {}, msg),
    info: (msg, fields) => p.info(fields ?? {}, msg),
    warn: (msg, fields) => p.warn(fields ?? {}, msg),
    error: (msg, fields) => p.error(fields ?? {}, msg),
    scope: (fields) => wrap(p.child(fields)),
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
