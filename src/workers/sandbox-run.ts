/**
 * One job (or rotator step) in the sandbox, start to end: its context (logs, progress, secrets),
 * its result checked and masked, every value handed to it zero-filled before it is reported done.
 * Console and `process.stdout`/`stderr` report through the same masked, capped log path.
 */
import { performance } from 'node:perf_hooks';
import {
  CancelledError,
  ResultError,
  SecretScopeError,
  ShutdownError,
  TimeoutError,
  deserializeError,
  serializeError,
  type SerializedError,
  errorMessage,
} from '../errors.js';
import { moveBytes } from '../bytes.js';
import { SecretMask } from '../secrets/secret-mask.js';
import type { Processor, ProcessorContext, Rotator } from './processor-api.js';
import type { FromSandbox, LogLevel, RunMessage, RunStats, SecretReply } from './protocol.js';
import { init, port, post } from './sandbox-link.js';

/** A log line's longest message; longer ones are cut (the bytes count against maxLogBytes). */
const MAX_LOG_MESSAGE = 16 * 1024;
/** Fields whose JSON is longer than this are replaced by a note. */
const MAX_LOG_FIELDS = 16 * 1024;
/** At most one progress message per this interval leaves the sandbox (the latest value wins). */
const PROGRESS_INTERVAL_MS = 50;

/** State of the job running now; reset after each job. */
interface Current {
  controller: AbortController;
  mask: SecretMask;
  handed: Uint8Array[];
  pending: Map<number, { resolve: (v: Uint8Array) => void; reject: (e: Error) => void }>;
  logLines: number;
  logBytes: number;
  /** Progress waiting for its interval to pass (the latest value), and the timer that sends it. */
  progress: { value: unknown; pending: boolean; timer: NodeJS.Timeout | null };
  /** Event-loop use when the job started (for its run stats). */
  eluStart: ReturnType<typeof performance.eventLoopUtilization>;
}
let current: Current | null = null;
let reqSeq = 0;

/** Fields as JSON-safe data of bounded size (a BigInt or a cycle must not break the log line). */
function boundedFields(fields: Record<string, unknown>): Record<string, unknown> {
  let json: string | undefined;
  try {
    json = JSON.stringify(fields);
  } catch (err) {
    return { unserializable: errorMessage(err) };
  }
  if (json === undefined) return {};
  if (json.length > MAX_LOG_FIELDS) return { truncated: `fields of ${json.length} characters were dropped` };
  const parsed: unknown = JSON.parse(json);
  return typeof parsed === 'object' && parsed !== null ? { ...parsed } : {};
}

export function emitLog(
  level: LogLevel,
  text: string,
  rawFields: Record<string, unknown> | undefined,
  source: 'processor' | 'console',
): void {
  const c = current;
  const m = c?.mask;
  const cut = text.length > MAX_LOG_MESSAGE ? `${text.slice(0, MAX_LOG_MESSAGE)}… [cut]` : text;
  const msg = m ? m.text(cut) : cut;
  const fields = rawFields ? boundedFields(m ? m.fields(rawFields) : rawFields) : undefined;
  if (c) {
    const bytes = msg.length + (fields ? JSON.stringify(fields).length : 0);
    c.logLines += 1;
    c.logBytes += bytes;
    if (c.logLines > init.maxLogLines || c.logBytes > init.maxLogBytes) {
      if (c.logLines !== Infinity)
        post({
          type: 'log',
          level: 'warn',
          msg: `log output above ${init.maxLogLines} lines or ${init.maxLogBytes} bytes; the rest of this job's output is dropped`,
          source: 'processor',
        });
      c.logLines = Infinity;
      return;
    }
  }
  post({ type: 'log', level, msg, ...(fields ? { fields } : {}), source });
}

/** Sends the job's latest progress value now (at the interval, and before the job reports done). */
function flushProgress(c: Current): void {
  const p = c.progress;
  if (p.timer) clearTimeout(p.timer);
  p.timer = null;
  if (!p.pending) return;
  p.pending = false;
  post({ type: 'progress', value: p.value });
}

/** ctx.progress(): JSON data within maxProgressBytes; at most one message per interval, the latest wins. */
function reportProgress(c: Current, value: unknown): void {
  // Bytes serialize to several characters each: refuse a large buffer before stringifying it.
  if (ArrayBuffer.isView(value) && value.byteLength > init.maxProgressBytes)
    throw new ResultError(
      `progress value is a ${value.byteLength}-byte buffer, above maxProgressBytes=${init.maxProgressBytes}. Fix: report a small summary (a percentage, a stage name).`,
    );
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (err) {
    throw new ResultError(`progress must be JSON data: ${errorMessage(err)}`);
  }
  if (json === undefined) throw new ResultError('progress must be JSON data (got undefined or a function)');
  const bytes = Buffer.byteLength(json);
  if (bytes > init.maxProgressBytes)
    throw new ResultError(
      `progress value is ${bytes} bytes, above maxProgressBytes=${init.maxProgressBytes}. Fix: report a small summary (a percentage, a stage name).`,
    );
  const p = c.progress;
  p.value = c.mask.value(JSON.parse(json));
  p.pending = true;
  if (p.timer) return;
  flushProgress(c);
  p.timer = setTimeout(() => flushProgress(c), PROGRESS_INTERVAL_MS);
}

const consoleLevels: Record<string, LogLevel> = {
  log: 'info',
  info: 'info',
  debug: 'debug',
  warn: 'warn',
  error: 'error',
  trace: 'debug',
};

/** Console and stdout/stderr go through the same masked, capped path as ctx.log (set before any processor code runs). */
export function captureOutput(): void {
  for (const [method, level] of Object.entries(consoleLevels)) {
    Reflect.set(console, method, (...args: unknown[]) =>
      emitLog(
        level,
        process.getBuiltinModule('node:util').format(...(current?.mask.args(args) ?? args)),
        undefined,
        'console',
      ),
    );
  }
  /**
   * `process.stdout`/`stderr` report their writes as log lines. Node makes each stream on first
   * access (loading `node:stream` and its kin: ~5 ms of CPU at a process sandbox's start), so its
   * getter is wrapped rather than called: the stream is made, and its `write` replaced, the first
   * time a processor reaches for it, before it can write anything.
   */
  for (const [name, level] of [
    ['stdout', 'info'],
    ['stderr', 'warn'],
  ] as const) {
    const mask = (stream: NodeJS.WriteStream): NodeJS.WriteStream => {
      // write() has overloads (encoding, callback); every form lands here and is reported as written.
      Reflect.set(stream, 'write', (chunk: unknown) => {
        emitLog(level, String(chunk).replace(/\n$/, ''), undefined, 'console');
        return true;
      });
      return stream;
    };
    const own = Object.getOwnPropertyDescriptor(process, name);
    const get = own?.get;
    if (get && own.configurable) {
      let stream: NodeJS.WriteStream | null = null;
      Object.defineProperty(process, name, {
        configurable: false,
        enumerable: own.enumerable ?? true,
        get: () => (stream ??= mask(Reflect.apply(get, process, []))),
      });
    } else mask(process[name]);
  }
}

/** Data of a rotator step's run message. */
interface RotatorStepData {
  step: 'create' | 'set' | 'test' | 'finish';
  secret: string;
  retiredVersion?: string;
}

/** Runs one rotator step: `current` and `value` arrive as the job's secrets; `create` returns new bytes. */
async function rotatorStep(
  rotator: Rotator,
  msg: RunMessage,
  bytes: (name: string) => Uint8Array | undefined,
): Promise<{ value?: Uint8Array<ArrayBuffer> }> {
  // A rotator sandbox's jobs are built by the rotation service (sandboxed-rotator.ts) in this shape.
  // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- see the line above
  const d = msg.data as RotatorStepData;
  const view = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  const ctx = {
    secret: d.secret,
    current: () => {
      const c = bytes('current');
      return c ? Promise.resolve(view(c)) : Promise.reject(new Error(`secret "${d.secret}" has no current version`));
    },
  };
  const value = bytes('value');
  if (d.step === 'create') {
    const created = await rotator.create(ctx);
    return { value: moveBytes(created) };
  }
  if ((d.step === 'set' || d.step === 'test') && !value) throw new Error(`rotator step ${d.step} got no value`);
  if (d.step === 'set' && value) await rotator.set?.(ctx, value);
  else if (d.step === 'test' && value) await rotator.test?.(ctx, value);
  else await rotator.finish?.({ ...ctx, retiredVersion: d.retiredVersion ?? '' });
  return {};
}

function abortReasonError(reason: string): Error {
  if (reason === 'timeout') return new TimeoutError('job timed out');
  if (reason === 'shutdown') return new ShutdownError('supervisor is shutting down');
  return new CancelledError('job was cancelled');
}

function rejectUnserializable(_key: string, value: unknown): unknown {
  if (typeof value === 'function' || typeof value === 'symbol') {
    throw new ResultError(`result contains a ${typeof value}, which cannot be stored. Fix: return plain JSON data.`);
  }
  return value;
}

let jobsEnded = 0;
/**
 * The V8 heap now. A sandbox's first job reads it from `process.memoryUsage()` (~10 µs: it also
 * reads the RSS from /proc), which spares a sandbox that runs one job loading `node:v8`; later
 * jobs (and a first one that left no descriptor free) read it from `v8.getHeapStatistics()` (~0.5 µs).
 */
function heapNow(): { used: number; total: number } {
  if (jobsEnded++ === 0)
    try {
      const m = process.memoryUsage();
      return { used: m.heapUsed, total: m.heapTotal };
    } catch {
      // It opens /proc/self/stat: a job that used up its descriptors (EMFILE) leaves none for it.
    }
  const h = process.getBuiltinModule('node:v8').getHeapStatistics();
  return { used: h.used_heap_size, total: h.total_heap_size };
}

function stats(eluStart: ReturnType<typeof performance.eventLoopUtilization>, secretsZeroed: number): RunStats {
  const elu = performance.eventLoopUtilization(eluStart);
  const heap = heapNow();
  return { cpuMs: elu.active, heapUsedBytes: heap.used, peakHeapBytes: heap.total, secretsZeroed };
}

function requestSecret(c: Current, name: string): Promise<Uint8Array> {
  const reqId = ++reqSeq;
  return new Promise<Uint8Array>((resolve, reject) => {
    c.pending.set(reqId, { resolve, reject });
    post({ type: 'secret-request', reqId, name: String(name) });
  });
}

export function onSecretReply(msg: SecretReply): void {
  const c = current;
  const waiter = c?.pending.get(msg.reqId);
  if (!c || !waiter) {
    if (msg.ok) msg.value.fill(0);
    return;
  }
  c.pending.delete(msg.reqId);
  if (!msg.ok) {
    waiter.reject(deserializeError(msg.error));
    return;
  }
  c.handed.push(msg.value);
  c.mask.add(msg.value);
  waiter.resolve(msg.value);
}

export async function run(module: Processor | Rotator, msg: RunMessage): Promise<void> {
  const c: Current = {
    controller: new AbortController(),
    mask: new SecretMask(),
    handed: [],
    pending: new Map(),
    logLines: 0,
    logBytes: 0,
    progress: { value: null, pending: false, timer: null },
    eluStart: performance.eventLoopUtilization(),
  };
  current = c;
  const delivered = new Map<string, Uint8Array>();
  for (const s of msg.secrets) {
    delivered.set(s.name, s.value);
    c.handed.push(s.value);
    c.mask.add(s.value);
  }
  const placeholders = new Map((msg.placeholders ?? []).map((p) => [p.name, p.placeholder]));
  /** Declared secrets were delivered at job start; anything else is asked for, so the denial is audited. */
  const bytesOf = (name: string): Promise<Uint8Array> => {
    const v = delivered.get(name);
    if (v) return Promise.resolve(v);
    if (placeholders.has(name))
      return Promise.reject(
        new SecretScopeError(
          `secret "${name}" is injected at egress: this sandbox never holds its value. Fix: send ctx.secrets.placeholder("${name}") where the value goes (its binding's host and header); the egress proxy puts the value in.`,
        ),
      );
    return requestSecret(c, name);
  };
  const { eluStart } = c;
  const logAt =
    (level: LogLevel) =>
    (m: string, fields?: Record<string, unknown>): void =>
      emitLog(level, String(m), fields, 'processor');
  const ctx: ProcessorContext = {
    signal: c.controller.signal,
    log: { debug: logAt('debug'), info: logAt('info'), warn: logAt('warn'), error: logAt('error') },
    progress: (value) => reportProgress(c, value),
    secrets: {
      names: Object.freeze([...msg.secretNames]),
      get: async (name) => {
        const bytes = await bytesOf(name);
        return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      },
      text: async (name) => {
        const bytes = await bytesOf(name);
        return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
      },
      placeholder: (name) => {
        const p = placeholders.get(name);
        if (p) return p;
        if (delivered.has(name))
          throw new SecretScopeError(
            `secret "${name}" is delivered to this job, not injected: use ctx.secrets.get("${name}"), or give it a binding (secrets.items.${name}.binding) to have it injected.`,
          );
        throw new SecretScopeError(
          `secret "${name}" is not injected for job type ${msg.jobType}. Fix: declare it in the type's secrets with a binding (secrets.items.${name}.binding).`,
        );
      },
    },
  };
  let outcome: { ok: true; resultJson: string } | { ok: false; error: SerializedError };
  let produced: Uint8Array<ArrayBuffer> | undefined;
  try {
    let result: unknown;
    if (typeof module === 'function')
      result = await module({ id: msg.jobId, type: msg.jobType, attempt: msg.attempt, data: msg.data }, ctx);
    else produced = (await rotatorStep(module, msg, (n) => delivered.get(n))).value;
    const resultJson = c.mask.text(JSON.stringify(result ?? null, rejectUnserializable));
    const bytes = Buffer.byteLength(resultJson);
    outcome =
      bytes > init.maxResultBytes
        ? {
            ok: false,
            error: {
              ...serializeError(
                new ResultError(
                  `result is ${bytes} bytes, above maxResultBytes=${init.maxResultBytes}. Fix: store large output elsewhere and return a reference.`,
                ),
              ),
              code: 'RESULT_TOO_LARGE',
            },
          }
        : { ok: true, resultJson };
  } catch (err) {
    const reason = c.controller.signal.aborted ? String(c.controller.signal.reason) : null;
    const error = reason
      ? abortReasonError(reason)
      : err instanceof TypeError && /BigInt|circular/i.test(err.message)
        ? new ResultError(`result cannot be serialized: ${err.message}. Fix: return plain JSON data.`)
        : err;
    const s = serializeError(error);
    outcome = {
      ok: false,
      error: { ...s, message: c.mask.text(s.message), ...(s.stack ? { stack: c.mask.text(s.stack) } : {}) },
    };
  }
  endJob(c);
  current = null;
  // A rotator's created value leaves as bytes (moved, for threads), never through the masked text paths.
  const runStats = stats(eluStart, c.handed.length);
  const done: FromSandbox = outcome.ok
    ? { type: 'done', ...outcome, ...runStats, ...(produced ? { value: produced } : {}) }
    : { type: 'done', ...outcome, ...runStats };
  post(done, produced && port ? [produced.buffer] : []);
  if (produced && !port) produced.fill(0);
}

/** Asks the job running now (if any) to stop: its signal aborts with `reason`. */
export function abortJob(reason: 'timeout' | 'cancelled' | 'shutdown'): void {
  current?.controller.abort(reason);
}

/**
 * A throw or a rejection nothing awaits, while a job runs: the job fails with it (masked, code
 * PROCESSOR_FAILED, retried as the type allows). Between jobs there is nothing to report.
 */
export function failJobOnStrayError(kind: 'uncaught exception' | 'unhandled rejection', err: unknown): void {
  const c = current;
  if (!c) return;
  current = null;
  const s = serializeError(err instanceof Error ? err : new Error(errorMessage(err)));
  endJob(c);
  post({
    type: 'done',
    ok: false,
    error: {
      ...s,
      code: 'PROCESSOR_FAILED',
      message: c.mask.text(`${kind} in the processor: ${s.message}`),
      ...(s.stack ? { stack: c.mask.text(s.stack) } : {}),
    },
    ...stats(c.eluStart, c.handed.length),
  });
}

/** Discard: every value handed to the job is zero-filled before the job is reported done (its last progress first). */
function endJob(c: Current): void {
  flushProgress(c);
  for (const b of c.handed) b.fill(0);
  for (const w of c.pending.values()) w.reject(new CancelledError('job ended'));
}
