/**
 * Runs inside a sandbox thread: loads one processor module, then runs the jobs it is sent, one
 * at a time. Everything leaving this thread goes through `post`, after secret masking, so nothing
 * reaches the supervisor that is not a plain, checked, masked message.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { format } from 'node:util';
import v8 from 'node:v8';
import { CancelledError, ProcessorLoadError, ResultError, ShutdownError, TimeoutError, deserializeError, serializeError, type SerializedError } from '../errors.js';
import type { FromSandbox, LogLevel, RunMessage, RunStats, SandboxInit, SecretReply, ToSandbox } from './protocol.js';
import type { Processor, ProcessorContext } from './processor-api.js';
import { SecretMask } from './secret-mask.js';

const init = workerData as SandboxInit;
const port = parentPort!;
const post = (msg: FromSandbox): void => port.postMessage(msg);

/** State of the job running now; reset after each job. */
interface Current {
  controller: AbortController;
  mask: SecretMask;
  handed: Uint8Array[];
  pending: Map<number, { resolve: (v: Uint8Array) => void; reject: (e: Error) => void }>;
  logLines: number;
}
let current: Current | null = null;
let reqSeq = 0;

function emitLog(level: LogLevel, msg: string, fields: Record<string, unknown> | undefined, source: 'processor' | 'console'): void {
  const c = current;
  if (c) {
    c.logLines += 1;
    if (c.logLines > init.maxLogLines) {
      if (c.logLines === init.maxLogLines + 1) post({ type: 'log', level: 'warn', msg: `log output above ${init.maxLogLines} lines; the rest of this job's output is dropped`, source: 'processor' });
      return;
    }
  }
  const m = c?.mask;
  post({ type: 'log', level, msg: m ? m.text(msg) : msg, ...(fields ? { fields: m ? m.value(fields) : fields } : {}), source });
}

// Console and stdout/stderr go through the same masked, capped path as ctx.log.
const consoleLevels: Record<string, LogLevel> = { log: 'info', info: 'info', debug: 'debug', warn: 'warn', error: 'error', trace: 'debug' };
for (const [method, level] of Object.entries(consoleLevels)) {
  (console as unknown as Record<string, (...a: unknown[]) => void>)[method] = (...args: unknown[]) => emitLog(level, format(...args), undefined, 'console');
}
for (const [stream, level] of [[process.stdout, 'info'], [process.stderr, 'warn']] as const) {
  stream.write = ((chunk: unknown) => {
    emitLog(level, String(chunk).replace(/\n$/, ''), undefined, 'console');
    return true;
  }) as typeof stream.write;
}

async function load(): Promise<Processor> {
  if (/\.[cm]?ts$/.test(init.processorPath)) {
    // TypeScript processors need a loader in this thread; JS processors skip the cost.
    const { register } = await import('tsx/esm/api');
    register();
  }
  const mod = (await import(pathToFileURL(init.processorPath).href)) as { default?: unknown };
  if (typeof mod.default !== 'function') {
    throw new ProcessorLoadError(`processor ${init.processorPath} has no default export function. Fix: export default async function (job, ctx) { … }`);
  }
  return mod.default as Processor;
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

function stats(eluStart: ReturnType<typeof performance.eventLoopUtilization>, secretsZeroed: number): RunStats {
  const elu = performance.eventLoopUtilization(eluStart);
  const heap = v8.getHeapStatistics();
  return { cpuMs: elu.active, heapUsedBytes: heap.used_heap_size, peakHeapBytes: heap.total_heap_size, secretsZeroed };
}

function requestSecret(c: Current, name: string): Promise<Uint8Array> {
  const reqId = ++reqSeq;
  return new Promise<Uint8Array>((resolve, reject) => {
    c.pending.set(reqId, { resolve, reject });
    post({ type: 'secret-request', reqId, name: String(name) });
  });
}

function onSecretReply(msg: SecretReply): void {
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

async function run(processor: Processor, msg: RunMessage): Promise<void> {
  const c: Current = { controller: new AbortController(), mask: new SecretMask(), handed: [], pending: new Map(), logLines: 0 };
  current = c;
  const delivered = new Map<string, Uint8Array>();
  for (const s of msg.secrets) {
    delivered.set(s.name, s.value);
    c.handed.push(s.value);
    c.mask.add(s.value);
  }
  /** Declared secrets were delivered at job start; anything else is asked for, so the denial is audited. */
  const bytesOf = (name: string): Promise<Uint8Array> => {
    const v = delivered.get(name);
    return v ? Promise.resolve(v) : requestSecret(c, name);
  };
  const eluStart = performance.eventLoopUtilization();
  const logAt =
    (level: LogLevel) =>
    (m: string, fields?: Record<string, unknown>): void =>
      emitLog(level, String(m), fields, 'processor');
  const ctx: ProcessorContext = {
    signal: c.controller.signal,
    log: { debug: logAt('debug'), info: logAt('info'), warn: logAt('warn'), error: logAt('error') },
    progress: (value) => post({ type: 'progress', value: c.mask.value(value) }),
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
    },
  };
  let outcome: { ok: true; resultJson: string } | { ok: false; error: SerializedError };
  try {
    const result = await processor({ id: msg.jobId, type: msg.jobType, attempt: msg.attempt, data: msg.data }, ctx);
    const resultJson = c.mask.text(JSON.stringify(result ?? null, rejectUnserializable));
    const bytes = Buffer.byteLength(resultJson);
    outcome =
      bytes > init.maxResultBytes
        ? { ok: false, error: { ...serializeError(new ResultError(`result is ${bytes} bytes, above maxResultBytes=${init.maxResultBytes}. Fix: store large output elsewhere and return a reference.`)), code: 'RESULT_TOO_LARGE' } }
        : { ok: true, resultJson };
  } catch (err) {
    const reason = c.controller.signal.aborted ? String(c.controller.signal.reason) : null;
    const error = reason
      ? abortReasonError(reason)
      : err instanceof TypeError && /BigInt|circular/i.test(err.message)
        ? new ResultError(`result cannot be serialized: ${err.message}. Fix: return plain JSON data.`)
        : err;
    const s = serializeError(error);
    outcome = { ok: false, error: { ...s, message: c.mask.text(s.message), ...(s.stack ? { stack: c.mask.text(s.stack) } : {}) } };
  }
  // Discard: every value handed to this job is zero-filled before the job is reported done.
  for (const b of c.handed) b.fill(0);
  for (const w of c.pending.values()) w.reject(new CancelledError('job ended'));
  current = null;
  post({ type: 'done', ...outcome, ...stats(eluStart, c.handed.length) } as FromSandbox);
}

async function main(): Promise<void> {
  let processor: Processor;
  try {
    processor = await load();
  } catch (err) {
    post({ type: 'load-failed', error: serializeError(err instanceof ProcessorLoadError ? err : new ProcessorLoadError(`could not load processor ${init.processorPath}: ${(err as Error).message}`)) });
    return;
  }
  port.on('message', (msg: ToSandbox) => {
    if (msg.type === 'run') void run(processor, msg);
    else if (msg.type === 'secret') onSecretReply(msg);
    else if (msg.type === 'abort') current?.controller.abort(msg.reason);
  });
  post({ type: 'ready' });
}

void main();
