import { performance } from 'node:perf_hooks';
import type { SecretValue } from '../secrets/provider.js';
import {
  CancelledError,
  serializeError,
  deserializeError,
  FleetError,
  SandboxCrashError,
  SecretScopeError,
  ShutdownError,
  TimeoutError,
} from '../errors.js';
import type { FromSandbox, LogLevel, RunMessage, RunStats, SandboxInit, ToSandbox } from './protocol.js';
import type { SandboxLayer } from './sandbox-boundary.js';
import { startProcessHost, startThreadHost, type ProcessHostOptions, type SandboxHost } from './sandbox-host.js';

export interface SandboxOptions extends Omit<SandboxInit, 'maxLogLines' | 'egressForwarder'> {
  maxOldGenerationSizeMb: number;
  /** @defaultValue 1000 */
  maxLogLines?: number;
  /** Run as its own OS process with these settings; a worker thread when absent. */
  process?: ProcessHostOptions;
}

export interface RunOptions {
  timeoutMs: number;
  abortGraceMs: number;
  /** Aborting it cancels the job through the same path as a timeout; its reason picks the error. */
  signal?: AbortSignal;
  onProgress?: (value: unknown) => void;
  onLog?: (
    level: LogLevel,
    msg: string,
    fields: Record<string, unknown> | undefined,
    source: 'processor' | 'console',
  ) => void;
  /** Serves `ctx.secrets.get(name)` for names not delivered at job start (undeclared: denied and audited). */
  onSecretRequest?: (name: string) => Promise<SecretValue>;
}

export interface RunResult extends RunStats {
  resultJson: string;
  /** A rotator step's created value. */
  value?: Uint8Array;
}

type StopReason = 'timeout' | 'cancelled' | 'shutdown';

/** A view that owns its whole ArrayBuffer, so it can be transferred; a copy (and the original zeroed) otherwise. */
function ownBuffer(value: Uint8Array): Uint8Array<ArrayBuffer> {
  const { buffer } = value;
  if (buffer instanceof ArrayBuffer && value.byteOffset === 0 && value.byteLength === buffer.byteLength)
    return new Uint8Array(buffer);
  const own = new Uint8Array(value);
  value.fill(0);
  return own;
}

/** The error a job ends with when it is stopped from outside. */
function stopError(reason: StopReason, timeoutMs: number): FleetError {
  if (reason === 'timeout')
    return new TimeoutError(`job exceeded timeoutMs=${timeoutMs} and its sandbox was terminated`);
  if (reason === 'shutdown')
    return new ShutdownError('supervisor shut down before the job finished; it is returned to the queue');
  return new CancelledError('job was cancelled and its sandbox was terminated');
}

const live = new Set<Sandbox>();
/** Sandboxes started and not yet destroyed in this process (tests assert it returns to 0). */
export function liveSandboxCount(): number {
  return live.size;
}

/**
 * One isolated execution instance that runs one job at a time: a worker thread (own V8 heap,
 * module graph, empty environment) or its own OS process behind the permission model and, on
 * Linux, namespaces (see {@link startProcessHost}). `destroy()` stops it even inside
 * `while (true) {}`.
 */
export class Sandbox {
  readonly jobType: string;
  readonly spawnMs: number;
  /** The layers this sandbox runs behind (`thread`, or `process`, `permission-model`, `namespaces`, `egress-proxy`). */
  readonly layers: readonly SandboxLayer[];
  jobsRun = 0;
  lastHeapUsedBytes = 0;
  #host: SandboxHost;
  #dead = false;
  #onDeath: ((err: FleetError) => void) | null = null;
  #onMessage: ((msg: FromSandbox) => void) | null = null;

  private constructor(host: SandboxHost, jobType: string, spawnMs: number) {
    this.#host = host;
    this.jobType = jobType;
    this.spawnMs = spawnMs;
    this.layers = host.layers;
    live.add(this);
    host.onMessage((msg) => this.#onMessage?.(msg));
    host.onDeath((err) => {
      live.delete(this);
      if (this.#dead) return;
      this.#dead = true;
      this.#onDeath?.(err);
    });
  }

  /** Spawns a sandbox and resolves once its processor module has loaded. */
  static async start(options: SandboxOptions): Promise<Sandbox> {
    const started = performance.now();
    const init: SandboxInit = {
      processorPath: options.processorPath,
      jobType: options.jobType,
      maxResultBytes: options.maxResultBytes,
      maxLogLines: options.maxLogLines ?? 1000,
      ...(options.kind ? { kind: options.kind } : {}),
      ...(options.nice ? { nice: options.nice } : {}),
    };
    const host = options.process
      ? await startProcessHost(init, options.maxOldGenerationSizeMb, options.process)
      : await startThreadHost(init, options.maxOldGenerationSizeMb);
    return new Sandbox(host, options.jobType, performance.now() - started);
  }

  get alive(): boolean {
    return !this.#dead;
  }

  /** The sandbox's OS process (for RSS figures); undefined for threads. */
  get pid(): number | undefined {
    return this.#host.pid;
  }

  /** Runs one job. Rejects with a {@link FleetError} describing how it failed. */
  run(message: RunMessage, options: RunOptions): Promise<RunResult> {
    if (this.#dead) {
      // The values were fetched for this job: they never leave, so they are zeroed here.
      for (const secret of message.secrets) secret.value.fill(0);
      return Promise.reject(new SandboxCrashError('sandbox is no longer running'));
    }
    this.jobsRun += 1;
    return new Promise<RunResult>((resolve, reject) => {
      let stopping: StopReason | null = null;
      // Assigned below, after settle() (which clears it) is defined.
      // eslint-disable-next-line prefer-const -- assigned after settle(), which reads it, is defined
      let softTimer: NodeJS.Timeout | undefined;
      let killTimer: NodeJS.Timeout | undefined;
      const settle = (): void => {
        clearTimeout(softTimer);
        clearTimeout(hardTimer);
        clearTimeout(killTimer);
        options.signal?.removeEventListener('abort', onAbort);
        this.#onMessage = null;
        this.#onDeath = null;
        this.#host.setJob(null);
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
      softTimer = setTimeout(
        () => stop('timeout', options.abortGraceMs),
        Math.max(0, options.timeoutMs - options.abortGraceMs),
      );
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
            if (msg.ok)
              resolve({
                resultJson: msg.resultJson,
                cpuMs: msg.cpuMs,
                heapUsedBytes: msg.heapUsedBytes,
                peakHeapBytes: msg.peakHeapBytes,
                secretsZeroed: msg.secretsZeroed,
                ...(msg.value ? { value: msg.value } : {}),
              });
            else reject(stopping ? stopError(stopping, options.timeoutMs) : deserializeError(msg.error));
            break;
          default:
            break;
        }
      };
      if (options.signal?.aborted) onAbort();
      else options.signal?.addEventListener('abort', onAbort, { once: true });
      this.#host.setJob(message.jobId);
      // Secret bytes are transferred to a thread; for a process they are serialized onto the IPC
      // channel and this side's bytes are zero-filled as soon as they have left.
      const secrets = message.secrets.map((s) => ({ ...s, value: ownBuffer(s.value) }));
      const values = secrets.map((s) => s.value);
      this.#host.post(
        { ...message, secrets },
        values.map((v) => v.buffer),
        () => {
          for (const v of values) if (v.byteLength) v.fill(0);
        },
      );
    });
  }

  #serveSecret(reqId: number, name: string, serve: RunOptions['onSecretRequest']): void {
    const fail = (err: unknown): void => this.#post({ type: 'secret', reqId, ok: false, error: serializeError(err) });
    if (!serve) {
      fail(new SecretScopeError(`this job type declares no secrets; "${name}" is not available`));
      return;
    }
    serve(name).then(({ value, version }) => {
      // Transfer, not copy: after this the bytes exist only in the sandbox.
      const own = ownBuffer(value);
      if (this.#dead) {
        own.fill(0);
        return;
      }
      this.#host.post(
        { type: 'secret', reqId, ok: true, value: own, version } satisfies ToSandbox,
        [own.buffer],
        () => {
          if (own.byteLength) own.fill(0);
        },
      );
    }, fail);
  }

  #post(msg: ToSandbox): void {
    if (!this.#dead) this.#host.post(msg);
  }

  /** Ends the sandbox; everything it held (module state, secrets, heap, private /tmp) goes with it. */
  async destroy(): Promise<void> {
    this.#dead = true;
    this.#onDeath = null;
    this.#host.setJob(null);
    await this.#host.kill();
    live.delete(this);
  }
}
