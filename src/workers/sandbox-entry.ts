/**
 * Runs inside a sandbox (a worker thread, or its own process): loads one processor module (or a
 * rotator module), then runs the jobs it is sent, one at a time. Everything leaving the sandbox
 * goes through `post`, after secret masking, so nothing reaches the supervisor that is not a
 * plain, checked, masked message. One entry for both kinds of sandbox and both kinds of module,
 * so every output channel is masked the same way everywhere.
 */
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import {
  CancelledError,
  ProcessorLoadError,
  ResultError,
  SecretScopeError,
  ShutdownError,
  TimeoutError,
  deserializeError,
  serializeError,
  type SerializedError,
  errnoCode,
  errorMessage,
  fieldOf,
} from '../errors.js';
import { CHANNEL_ENV, CHANNEL_FD3, MAX_OUTGOING_FRAME_BYTES } from './channel.js';
import { openFdChannel, type FdChannel } from './fd-channel.js';
import type { FromSandbox, LogLevel, RunMessage, RunStats, SandboxInit, SecretReply, ToSandbox } from './protocol.js';
import type { Processor, ProcessorContext } from './processor-api.js';
import { rotatorOf, type Rotator } from './processor-api.js';
import { SecretMask } from '../secrets/secret-mask.js';

/**
 * Node's built-in modules that are not part of its start-up snapshot cost milliseconds of CPU each
 * to load (`node:net`, `node:v8`, `node:util`, `node:worker_threads` together ~10 ms, a third of a
 * bare Node start), and a `job` sandbox pays that per job: each is loaded where it is used, and
 * only by the kind of sandbox that uses it.
 */
const inProcess = process.env[CHANNEL_ENV] === CHANNEL_FD3;
// Read once and gone: the processor's environment is what the sandbox was given, no more.
Reflect.deleteProperty(process.env, CHANNEL_ENV);

/**
 * The channel to the supervisor: the thread's port, or a process's socket pair on fd 3 with
 * length-prefixed frames (channel.ts, through fd-channel.ts). Opened in main() for a process.
 */
const threads = inProcess ? null : process.getBuiltinModule('node:worker_threads');
const port = threads?.parentPort ?? null;
let channel: FdChannel | null = null;
/** Set once the sandbox is ending after a stray error: nothing more leaves it. */
let ending = false;
const post = (msg: FromSandbox, transfer: ArrayBuffer[] = []): void => {
  if (ending) return;
  if (port) {
    port.postMessage(msg, transfer);
    return;
  }
  channel?.send(msg);
};
/*
 * What arrives here (workerData, thread messages and frames) comes only from the supervisor, which
 * builds it with the protocol's types: these casts name that contract, they do not check it.
 */
/* eslint-disable @typescript-eslint/consistent-type-assertions -- see the comment above */
const asToSandbox = (m: unknown): ToSandbox => m as ToSandbox;
let init: SandboxInit = (port ? threads?.workerData : null) as SandboxInit;
/* eslint-enable @typescript-eslint/consistent-type-assertions -- end of the supervisor's contract */
const onMessage = (fn: (msg: ToSandbox) => void): void => {
  if (port) port.on('message', (m: unknown) => fn(asToSandbox(m)));
  else channel?.listen((m) => fn(asToSandbox(m)));
};

/**
 * Opens fd 3 as the channel and returns the init message (its first frame, which the supervisor
 * sends as the process starts). What follows is delivered through `onMessage`, once the processor
 * has loaded.
 */
function openChannel(): SandboxInit {
  // The supervisor is gone (or closed the channel): nothing is left to do here.
  const opened = openFdChannel(3, MAX_OUTGOING_FRAME_BYTES, () => process.exit(0));
  channel = opened.channel;
  const first = opened.first === null ? null : asToSandbox(opened.first);
  if (first?.type !== 'init') process.exit(0);
  return first.init;
}

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

function emitLog(
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

// Console and stdout/stderr go through the same masked, capped path as ctx.log.
const consoleLevels: Record<string, LogLevel> = {
  log: 'info',
  info: 'info',
  debug: 'debug',
  warn: 'warn',
  error: 'error',
  trace: 'debug',
};
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

/** What `require()` of an ES module it cannot load synchronously throws: import() loads those. */
const REQUIRE_ESM_REFUSALS = new Set(['ERR_REQUIRE_ASYNC_MODULE', 'ERR_REQUIRE_ESM', 'ERR_REQUIRE_CYCLE_MODULE']);

/**
 * The processor's module namespace. `require()` first: since Node 22.12 it loads an ES module
 * synchronously, which spares each sandbox start the ESM loader's dynamic `import()` path. A module
 * with top-level await (refused before it runs), a CommonJS module (whose `require()` gives its
 * exports, not a namespace; `import()` then takes it from the require cache without running it
 * again) and a Node without require(esm) go through `import()`, which gives what it always gave.
 */
async function importModule(file: string): Promise<unknown> {
  try {
    const mod: unknown = process.getBuiltinModule('node:module').createRequire(file)(file);
    if (Object.prototype.toString.call(mod) === '[object Module]') return mod;
  } catch (err) {
    if (!REQUIRE_ESM_REFUSALS.has(errnoCode(err) ?? '')) throw err;
  }
  return import(pathToFileURL(file).href);
}

/** The module's export: a processor function, or a rotator object. */
async function load(): Promise<Processor | Rotator> {
  let mod: unknown;
  if (port && /\.[cm]?ts$/.test(init.processorPath)) {
    // TypeScript in a thread: through tsx, whose hooks are the ESM loader's. A process sandbox strips
    // types natively (Node ≥ 22.18, or --experimental-strip-types): tsx's esbuild would need a
    // child process, which it may not start.
    const { register } = await import('tsx/esm/api');
    register();
    mod = await import(pathToFileURL(init.processorPath).href);
  } else mod = await importModule(init.processorPath);
  if (init.kind === 'rotator') {
    const r = rotatorOf(mod);
    if (!r)
      throw new ProcessorLoadError(
        `rotator module ${init.processorPath} exports no create(ctx) function. Fix: export { create, set?, test?, finish? } or a default object with them.`,
      );
    return r;
  }
  const processor = fieldOf(mod, 'default');
  if (typeof processor !== 'function') {
    throw new ProcessorLoadError(
      `processor ${init.processorPath} has no default export function. Fix: export default async function (job, ctx) { … }`,
    );
  }
  // A function is all that can be checked of a processor before it runs; its result is checked after.
  // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- see the line above
  return processor as Processor;
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
    const out = new Uint8Array(created.byteLength);
    out.set(created);
    created.fill(0);
    return { value: out };
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

async function run(module: Processor | Rotator, msg: RunMessage): Promise<void> {
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
  // Discard: every value handed to this job is zero-filled before the job is reported done.
  flushProgress(c);
  for (const b of c.handed) b.fill(0);
  for (const w of c.pending.values()) w.reject(new CancelledError('job ended'));
  current = null;
  // A rotator's created value leaves as bytes (moved, for threads), never through the masked text paths.
  const runStats = stats(eluStart, c.handed.length);
  const done: FromSandbox = outcome.ok
    ? { type: 'done', ...outcome, ...runStats, ...(produced ? { value: produced } : {}) }
    : { type: 'done', ...outcome, ...runStats };
  post(done, produced && port ? [produced.buffer] : []);
  if (produced && !port) produced.fill(0);
}

/**
 * OS layer: the sandbox's network namespace has only loopback. HTTP clients use the proxy
 * settings (`HTTPS_PROXY`, `NODE_USE_ENV_PROXY`) pointing here; this relays each connection to the
 * supervisor's egress proxy socket, which decides. Tampering with it gains nothing: the decision is
 * outside.
 */
function startEgressForwarder(f: { port: number; socket: string }): Promise<void> {
  const net = process.getBuiltinModule('node:net');
  return new Promise((resolve, reject) => {
    const server = net.createServer((client) => {
      const up = net.connect(f.socket);
      client.pipe(up).pipe(client);
      const end = (): void => {
        client.destroy();
        up.destroy();
      };
      client.on('error', end);
      up.on('error', end);
    });
    server.on('error', reject);
    server.listen(f.port, '127.0.0.1', () => {
      server.unref();
      resolve();
    });
  });
}

/**
 * Seat belts for a process sandbox, set before any processor code runs. The OS layer makes them
 * moot (nothing outside is visible); without it they keep a processor from signalling the
 * supervisor by pid. Node's permission model already denies child processes, workers, addons,
 * WASI, the inspector and `process.binding`.
 */
function harden(): void {
  const denied = (): never => {
    throw Object.assign(new Error('process.kill is not available in a fleet sandbox'), { code: 'ERR_ACCESS_DENIED' });
  };
  Object.defineProperty(process, 'kill', { value: denied, writable: false, configurable: false });
  Reflect.deleteProperty(process, '_kill');
  Reflect.deleteProperty(process, '_debugProcess');
}

/**
 * Applies the proxy settings when the processor first reaches for an HTTP client rather than at
 * start-up: the first `fetch()`, or the first import of `http`/`https` (a module hook), arms
 * `http.setGlobalProxyFromEnv()` once. A sandbox that never connects never loads it.
 */
function armProxyOnFirstUse(): void {
  const { registerHooks } = process.getBuiltinModule('node:module');
  let armed = false;
  const arm = (): void => {
    if (armed) return;
    armed = true;
    const http: typeof import('node:http') & { setGlobalProxyFromEnv?: () => void } =
      process.getBuiltinModule('node:http');
    http.setGlobalProxyFromEnv?.();
  };
  const originalFetch = globalThis.fetch;
  globalThis.fetch = (...args: Parameters<typeof fetch>) => {
    arm();
    globalThis.fetch = originalFetch;
    return originalFetch(...args);
  };
  const clients = new Set(['http', 'https', 'node:http', 'node:https']);
  registerHooks({
    resolve(specifier, context, nextResolve) {
      if (clients.has(specifier)) arm();
      return nextResolve(specifier, context);
    },
  });
}

/**
 * A throw or a rejection nothing awaits (a timer callback, a forgotten promise), as BullMQ's child
 * processes treat it: the job it happened in fails with the error (masked, code PROCESSOR_FAILED,
 * retried as the type allows), and the sandbox ends, since its state is no longer known. Without
 * this, the sandbox would die with Node's default report on stderr and the job count as a crash.
 */
function onStrayError(kind: 'uncaught exception' | 'unhandled rejection', err: unknown): void {
  if (ending) return;
  const c = current;
  if (c) {
    current = null;
    const s = serializeError(err instanceof Error ? err : new Error(errorMessage(err)));
    flushProgress(c);
    for (const b of c.handed) b.fill(0);
    for (const w of c.pending.values()) w.reject(new CancelledError('job ended'));
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
  ending = true;
  if (channel) channel.end(() => process.exit(70));
  else process.exit(70);
}

async function main(): Promise<void> {
  process.on('uncaughtException', (err) => onStrayError('uncaught exception', err));
  process.on('unhandledRejection', (err) => onStrayError('unhandled rejection', err));
  if (!port) {
    // A process sandbox: its init is the channel's first frame.
    init = openChannel();
    harden();
    if (init.egressForwarder) await startEgressForwarder(init.egressForwarder);
    if (init.lazyProxy) armProxyOnFirstUse();
  }
  // Below the supervisor's priority (this thread only: pid 0 is the calling thread on Linux). Without
  // CAP_SYS_NICE the sandbox cannot raise it back.
  if (init.nice) {
    try {
      process.getBuiltinModule('node:os').setPriority(0, init.nice);
    } catch (err) {
      emitLog(
        'warn',
        `could not lower the sandbox's CPU priority to nice ${init.nice}: ${errorMessage(err)}`,
        undefined,
        'console',
      );
    }
  }
  let module: Processor | Rotator;
  try {
    module = await load();
  } catch (err) {
    post({
      type: 'load-failed',
      error: serializeError(
        err instanceof ProcessorLoadError
          ? err
          : new ProcessorLoadError(`could not load processor ${init.processorPath}: ${errorMessage(err)}`),
      ),
    });
    return;
  }
  // Ready first: a process starts its thread pool for the channel's reads after that, off the start's path.
  post({ type: 'ready' });
  let runs = 0;
  onMessage((msg: ToSandbox) => {
    // A second job: this sandbox is a pool's, and its channel is cheaper per message as a socket.
    if (msg.type === 'run' && ++runs === 2) channel?.toSocket();
    if (msg.type === 'run') void run(module, msg);
    else if (msg.type === 'secret') onSecretReply(msg);
    else if (msg.type === 'abort') current?.controller.abort(msg.reason);
  });
}

void main();
