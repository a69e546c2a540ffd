import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import type { SecretValue } from '../secrets/provider.js';
import {
  CancelledError,
  serializeError,
  deserializeError,
  FleetError,
  MemoryLimitError,
  ProcessorError,
  ProcessorLoadError,
  SandboxCrashError,
  SecretScopeError,
  ShutdownError,
  TimeoutError,
} from '../errors.js';
import { compiledPath } from '../runtime-path.js';
import type { FromSandbox, LogLevel, RunMessage, RunStats, SandboxInit, ToSandbox } from './protocol.js';

const ENTRY = compiledPath(import.meta.url, './sandbox-entry.js');

export interface SandboxOptions extends Omit<SandboxInit, 'maxLogLines'> {
  maxOldGenerationSizeMb: number;
  /** @defaultValue 1000 */
  maxLogLines?: number;
}

export interface RunOptions {
  timeoutMs: number;
  abortGraceMs: number;
  /** Aborting it cancels the job through the same path as a timeout; its reason picks the error. */
  signal?: AbortSignal;
  onProgress?: (value: unknown) => void;
  onLog?: (level: LogLevel, msg: string, fields: Record<string, unknown> | undefined, source: 'processor' | 'console') => void;
  /** Serves `ctx.secrets.get(name)` for names not delivered at job start (undeclared: denied and audited). */
  onSecretRequest?: (name: string) => Promise<SecretValue>;
}

export interface RunResult extends RunStats {
  resultJson: string;
}

type StopReason = 'timeout' | 'cancelled' | 'shutdown';

/** A view that owns its whole ArrayBuffer, so it can be transferred; a copy (and the original zeroed) otherwise. */
function ownBuffer(value: Uint8Array): Uint8Array {
  if (value.byteOffset === 0 && value.byteLength === value.buffer.byteLength) return value;
  const own = value.slice();
  value.fill(0);
  return own;
}

/** The error a job ends with when it is stopped from outside. */
function stopError(reason: StopReason, timeoutMs: number): FleetError {
  if (reason === 'timeout') return new TimeoutError(`job exceeded timeoutMs=${timeoutMs} and its sandbox was terminated`);
  if (reason === 'shutdown') return new ShutdownError('supervisor shut down before the job finished; it is returned to the queue');
  return new CancelledError('job was cancelled and its sandbox was terminated');
}

const live = new Set<Sandbox>();
/** Sandboxes started and not yet destroyed in this process (tests assert it returns to 0). */
export function liveSandboxCount(): number {
  return live.size;
}

/**
 * One isolated execution instance: a worker thread with its own V8 heap (capped), its own module
 * graph, an empty environment and no access to the supervisor's memory. It runs one job at a
 * time. `terminate()` stops it even inside `while (true) {}`.
 */
export class Sandbox {
  readonly jobType: string;
  readonly spawnMs: number;
  jobsRun = 0;
  lastHeapUsedBytes = 0;
  #worker: Worker;
  #dead = false;
  #onDeath: ((err: FleetError) => void) | null = null;
  #onMessage: ((msg: FromSandbox) => void) | null = null;
  readonly #maxOldGenerationSizeMb: number;

  private constructor(worker: Worker, jobType: string, spawnMs: number, maxOld: number) {
    this.#worker = worker;
    this.jobType = jobType;
    this.spawnMs = spawnMs;
    this.#maxOldGenerationSizeMb = maxOld;
    live.add(this);
    worker.on('exit', () => live.delete(this));
    worker.on('message', (msg: FromSandbox) => this.#onMessage?.(msg));
    worker.on('error', (err: Error & { code?: string }) => this.#die(this.#classify(err)));
    worker.on('exit', (code) => this.#die(new SandboxCrashError(`sandbox exited with code ${code} mid-job (process.exit() or a crash in the processor)`)));
  }

  /** Spawns a sandbox and resolves once its processor module has loaded. */
  static start(options: SandboxOptions): Promise<Sandbox> {
    const started = performance.now();
    const init: SandboxInit = { processorPath: options.processorPath, jobType: options.jobType, maxResultBytes: options.maxResultBytes, maxLogLines: options.maxLogLines ?? 1000 };
    const worker = new Worker(ENTRY, {
      workerData: init,
      // The sandbox sees none of the supervisor's environment (tokens, URLs) and no argv.
      env: { NODE_ENV: process.env.NODE_ENV ?? 'production' },
      argv: [],
      stdout: false,
      stderr: false,
      resourceLimits: { maxOldGenerationSizeMb: options.maxOldGenerationSizeMb, maxYoungGenerationSizeMb: 16, stackSizeMb: 4 },
    });
    return new Promise<Sandbox>((resolve, reject) => {
      const fail = (err: Error): void => {
        cleanup();
        void worker.terminate();
        reject(err);
      };
      const onMessage = (msg: FromSandbox): void => {
        if (msg.type === 'ready') {
          cleanup();
          resolve(new Sandbox(worker, options.jobType, performance.now() - started, options.maxOldGenerationSizeMb));
        } else if (msg.type === 'load-failed') fail(deserializeError(msg.error));
      };
      const onError = (err: Error): void => fail(new ProcessorLoadError(`sandbox for ${options.jobType} failed to start: ${err.message}`, { cause: err }));
      const onExit = (code: number): void => fail(new ProcessorLoadError(`sandbox for ${options.jobType} exited with code ${code} while loading ${options.processorPath}`));
      const cleanup = (): void => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    });
  }

  get alive(): boolean {
    return !this.#dead;
  }

  #classify(err: Error & { code?: string }): FleetError {
    if (err.code === 'ERR_WORKER_OUT_OF_MEMORY') {
      return new MemoryLimitError(`job exceeded its memory limit (maxOldGenerationSizeMb=${this.#maxOldGenerationSizeMb}) and its sandbox was terminated`);
    }
    return new ProcessorError(`uncaught error in sandbox: ${err.message}`, { cause: err });
  }

  #die(err: FleetError): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#onDeath?.(err);
  }

  /** Runs one job. Rejects with a {@link FleetError} describing how it failed. */
  run(message: RunMessage, options: RunOptions): Promise<RunResult> {
    if (this.#dead) return Promise.reject(new SandboxCrashError('sandbox is no longer running'));
    this.jobsRun += 1;
    return new Promise<RunResult>((resolve, reject) => {
      let stopping: StopReason | null = null;
      let softTimer: NodeJS.Timeout | undefined;
      let killTimer: NodeJS.Timeout | undefined;
      const settle = (): void => {
        clearTimeout(softTimer);
        clearTimeout(hardTimer);
        clearTimeout(killTimer);
        options.signal?.removeEventListener('abort', onAbort);
        this.#onMessage = null;
        this.#onDeath = null;
      };
      /** Abort signal first, hard kill after the grace period (or at the deadline for timeouts). */
      const stop = (reason: StopReason, killAfterMs: number): void => {
        if (stopping) return;
        stopping = reason;
        this.#post({ type: 'abort', reason });
        killTimer = setTimeout(() => {
          settle();
          void this.destroy();
          reject(stopError(reason, options.timeoutMs));
        }, killAfterMs);
      };
      const onAbort = (): void => {
        const reason = options.signal?.reason;
        stop(reason === 'shutdown' ? 'shutdown' : 'cancelled', options.abortGraceMs);
      };
      // The processor is warned abortGraceMs before the deadline; the kill lands at timeoutMs.
      softTimer = setTimeout(() => stop('timeout', options.abortGraceMs), Math.max(0, options.timeoutMs - options.abortGraceMs));
      const hardTimer = setTimeout(() => {
        stopping = 'timeout';
        settle();
        void this.destroy();
        reject(stopError('timeout', options.timeoutMs));
      }, options.timeoutMs);

      this.#onDeath = (err) => {
        settle();
        reject(stopping ? stopError(stopping, options.timeoutMs) : err);
      };
      this.#onMessage = (msg) => {
        switch (msg.type) {
          case 'progress':
            options.onProgress?.(msg.value);
            break;
          case 'log':
            options.onLog?.(msg.level, msg.msg, msg.fields, msg.source);
            break;
          case 'secret-request':
            this.#serveSecret(msg.reqId, msg.name, options.onSecretRequest);
            break;
          case 'done':
            settle();
            this.lastHeapUsedBytes = msg.heapUsedBytes;
            if (msg.ok) resolve({ resultJson: msg.resultJson, cpuMs: msg.cpuMs, heapUsedBytes: msg.heapUsedBytes, peakHeapBytes: msg.peakHeapBytes, secretsZeroed: msg.secretsZeroed });
            else reject(stopping ? stopError(stopping, options.timeoutMs) : deserializeError(msg.error));
            break;
          default:
            break;
        }
      };
      if (options.signal?.aborted) onAbort();
      else options.signal?.addEventListener('abort', onAbort, { once: true });
      // Secret bytes are transferred: after this line the supervisor holds no copy.
      this.#worker.postMessage(message, message.secrets.map((s) => ownBuffer(s.value).buffer as ArrayBuffer));
    });
  }

  #serveSecret(reqId: number, name: string, serve: RunOptions['onSecretRequest']): void {
    const fail = (err: unknown): void => this.#post({ type: 'secret', reqId, ok: false, error: serializeError(err) });
    if (!serve) {
      fail(new SecretScopeError(`this job type declares no secrets; "${name}" is not available`));
      return;
    }
    serve(name).then(
      ({ value, version }) => {
        // Transfer, not copy: after this the bytes exist only in the sandbox.
        const own = ownBuffer(value);
        if (this.#dead) {
          own.fill(0);
          return;
        }
        this.#worker.postMessage({ type: 'secret', reqId, ok: true, value: own, version } satisfies ToSandbox, [own.buffer as ArrayBuffer]);
      },
      fail,
    );
  }

  #post(msg: ToSandbox): void {
    if (!this.#dead) this.#worker.postMessage(msg);
  }

  /** Terminates the thread; everything it held (module state, secrets, heap) goes with it. */
  async destroy(): Promise<void> {
    this.#dead = true;
    this.#onDeath = null;
    await this.#worker.terminate();
    live.delete(this);
  }
}
