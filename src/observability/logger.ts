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
  /** `pretty`: one readable line per event (a terminal); `json`: one JSON object per line. @defaultValue `$LOG_FORMAT`, else `pretty` when stdout is a TTY, else `json` */
  format?: 'json' | 'pretty';
}

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO ', 40: 'WARN ', 50: 'ERROR', 60: 'FATAL' };
const COLORS: Record<number, string> = {
  20: '\x1b[90m',
  30: '\x1b[36m',
  40: '\x1b[33m',
  50: '\x1b[31m',
  60: '\x1b[31m',
};

/** `12:03:04 INFO  message  key=value …` for a person at a terminal (the same fields as the JSON). */
export function prettyLine(json: string, color = false): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    return json;
  }
  if (typeof parsed !== 'object' || parsed === null) return json;
  const o: Record<string, unknown> = { ...parsed };
  const { level, time, msg, pid: _pid, ...fields } = o;
  const t = new Date(Number(time)).toISOString().slice(11, 19);
  const lv = LEVELS[Number(level)] ?? String(level);
  const rest = Object.entries(fields)
    .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`)
    .join(' ');
  const head = color ? `${COLORS[Number(level)] ?? ''}${lv}\x1b[0m` : lv;
  return `${t} ${head} ${String(msg ?? '')}${rest ? `  ${color ? '\x1b[90m' : ''}${rest}${color ? '\x1b[0m' : ''}` : ''}\n`;
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
  const envFormat =
    process.env.LOG_FORMAT === 'json' || process.env.LOG_FORMAT === 'pretty' ? process.env.LOG_FORMAT : undefined;
  const format = options.format ?? envFormat ?? (!options.destination && process.stdout.isTTY ? 'pretty' : 'json');
  let destination = options.destination;
  if (format === 'pretty') {
    const out = options.destination ?? process.stdout;
    const color = !options.destination && process.stdout.isTTY === true && !process.env.NO_COLOR;
    destination = { write: (line: string) => void out.write(prettyLine(line, color)) };
  }
  const p = destination
    ? pino({ level, base: { pid: process.pid } }, destination)
    : pino({ level, base: { pid: process.pid } });
  return wrap(p);
}

/** A logger that drops everything, for library callers that pass none. */
export const silentLogger: Logger = makeLogger({ level: 'silent' });

/**
 * A rejection handler for work that may fail without failing its caller (a heartbeat, a best-effort
 * revoke, a log line copied to Redis): the failure is logged at `warn` with what was being done,
 * never swallowed.
 */
export function warnOnFailure(log: Logger, what: string, fields: Record<string, unknown> = {}): (err: unknown) => void {
  return (err: unknown) => log.warn(what, { ...fields, error: err instanceof Error ? err.message : String(err) });
}
