import { performance } from 'node:perf_hooks';
import { moveBytes } from '../bytes.js';
import type { SecretValue } from '../secrets/provider.js';
import {
  serializeError,
  FleetError,
  SandboxCrashError,
  SandboxLimitError,
  SandboxProtocolError,
  SecretScopeError,
} from '../errors.js';
import type { LogLevel, RunMessage, RunStats, SandboxInit, ToSandbox } from './protocol.js';
import { parseFromSandbox, type ParsedFromSandbox } from './protocol-schema.js';
import type { SandboxLayer } from './sandbox-boundary.js';
import { startThreadHost, type SandboxHost } from './sandbox-host.js';
import { startProcessHost, type ProcessHostOptions } from './process-host.js';
import { SecretMask } from '../secrets/secret-mask.js';
import {
  DEFAULT_BOUNDARY_LIMITS,
  errorFromSandbox,
  jsonBytes,
  jsonLength,
  stopError,
  type BoundaryLimits,
  type SandboxViolation,
  type StopReason,
} from './job-boundary.js';

export {
  DEFAULT_BOUNDARY_LIMITS,
  errorFromSandbox,
  type BoundaryLimits,
  type SandboxViolation,
} from './job-boundary.js';

export interface SandboxOptions extends Omit<
  SandboxInit,
  'maxLogLines' | 'maxLogBytes' | 'maxProgressBytes' | 'egressForwarder'
> {
  maxOldGenerationSizeMb: number;
  /** @defaultValue {@link DEFAULT_BOUNDARY_LIMITS} */
  limits?: Partial<BoundaryLimits>;
  /** Run as its own OS process with these settings; a worker thread when absent. */
  process?: ProcessHostOptions;
  /** Told when the sandbox is killed for a violation (the job, if any, fails with its code). */
  onViolation?: (v: SandboxViolation) => void;
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
  /** Parts of the delivered values to mask on their own too (a dynamic credential's password). */
  maskAlso?: readonly Uint8Array[];
}

export interface RunResult extends RunStats {
  resultJson: string;
  /** The result, parsed (and masked) by the supervisor. */
  result: unknown;
  /** Peak memory of the sandbox's cgroup during the job (process sandboxes with cgroups). */
  peakMemoryBytes?: number;
  /** A rotator step's created value. */
  value?: Uint8Array;
}

/** A view that owns its whole ArrayBuffer, so it can be transferred; a copy (and the original zeroed) otherwise. */
function ownBuffer(value: Uint8Array): Uint8Array<ArrayBuffer> {
  const { buffer } = value;
  if (buffer instanceof ArrayBuffer && value.byteOffset === 0 && value.byteLength === buffer.byteLength)
    return new Uint8Array(buffer);
  return moveBytes(value);
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
 *
 * Everything a sandbox sends is hostile input: each message is parsed against the protocol's
 * schema and checked against the sandbox's state (no `done` without a job, no reply ids out of
 * turn) and the job's limits; a violation kills the sandbox and fails its job with
 * `SANDBOX_PROTOCOL` or `SANDBOX_LIMIT`, and touches nothing else.
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
  readonly #limits: BoundaryLimits;
  readonly #maxResultBytes: number;
  readonly #onViolationReport: ((v: SandboxViolation) => void) | undefined;
  /** The job running now: its id, and how it ends on a violation. */
  #job: { id: string; fail: (err: FleetError) => void } | null = null;
  #onDeath: ((err: FleetError) => void) | null = null;
  #onMessage: ((msg: ParsedFromSandbox) => void) | null = null;

  private constructor(host: SandboxHost, options: SandboxOptions, limits: BoundaryLimits, spawnMs: number) {
    this.#host = host;
    this.jobType = options.jobType;
    this.spawnMs = spawnMs;
    this.layers = host.layers;
    this.#limits = limits;
    this.#maxResultBytes = options.maxResultBytes;
    this.#onViolationReport = options.onViolation;
    live.add(this);
    host.onMessage((raw) => this.#receive(raw));
    host.onViolation((problem, code) => this.#violate(code ?? 'SANDBOX_PROTOCOL', problem));
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
    const limits: BoundaryLimits = { ...DEFAULT_BOUNDARY_LIMITS, ...options.limits };
    const init: SandboxInit = {
      processorPath: options.processorPath,
      jobType: options.jobType,
      maxResultBytes: options.maxResultBytes,
      maxLogLines: limits.maxLogLines,
      maxLogBytes: limits.maxLogBytes,
      maxProgressBytes: limits.maxProgressBytes,
      ...(options.kind ? { kind: options.kind } : {}),
      ...(options.nice ? { nice: options.nice } : {}),
    };
    const host = options.process
      ? await startProcessHost(init, options.maxOldGenerationSizeMb, options.process)
      : await startThreadHost(init, options.maxOldGenerationSizeMb);
    return new Sandbox(host, options, limits, performance.now() - started);
  }

  get alive(): boolean {
    return !this.#dead;
  }

  /** The sandbox's OS process (for RSS figures); undefined for threads. */
  get pid(): number | undefined {
    return this.#host.pid;
  }

  /** Every message from the sandbox: parsed, then handed to the running job's handler. */
  #receive(raw: unknown): void {
    if (this.#dead) return;
    const parsed = parseFromSandbox(raw);
    if (!parsed.ok) {
      this.#violate('SANDBOX_PROTOCOL', parsed.problem);
      return;
    }
    const msg = parsed.msg;
    const handler = this.#onMessage;
    if (handler) {
      handler(msg);
      return;
    }
    // Between jobs: a timer the last job left may still log (dropped), nothing else may arrive.
    if (msg.type !== 'log' && msg.type !== 'progress')
      this.#violate('SANDBOX_PROTOCOL', `a "${msg.type}" message while no job was running`);
  }

  /** Kills the sandbox for what it sent, fails its job (if any) with `code`, and reports it. */
  #violate(code: SandboxViolation['code'], problem: string): void {
    if (this.#dead) return;
    const job = this.#job;
    const err =
      code === 'SANDBOX_LIMIT'
        ? new SandboxLimitError(`the sandbox was killed: ${problem}`)
        : new SandboxProtocolError(`the sandbox was killed for a protocol violation: ${problem}`);
    void this.destroy();
    job?.fail(err);
    try {
      this.#onViolationReport?.({ jobType: this.jobType, jobId: job?.id ?? null, code, problem });
    } catch {
      // A reporting hook must not turn a contained violation into a supervisor crash.
    }
  }

  /** Runs one job. Rejects with a {@link FleetError} describing how it failed. */
  run(message: RunMessage, options: RunOptions): Promise<RunResult> {
    if (this.#dead) {
      // The values were fetched for this job: they never leave, so they are zeroed here.
      for (const secret of message.secrets) secret.value.fill(0);
      return Promise.reject(new SandboxCrashError('sandbox is no longer running'));
    }
    this.jobsRun += 1;
    const limits = this.#limits;
    return new Promise<RunResult>((resolve, reject) => {
      let stopping: StopReason | null = null;
      // Assigned below, after settle() (which clears it) is defined.
      // eslint-disable-next-line prefer-const -- assigned after settle(), which reads it, is defined
      let softTimer: NodeJS.Timeout | undefined;
      let killTimer: NodeJS.Timeout | undefined;
      // What the job sent so far, counted against its limits.
      let messages = 0;
      let logLines = 0;
      let logBytes = 0;
      let secretRequests = 0;
      let deniedRequests = 0;
      const pending = new Set<number>();
      // The supervisor's own mask over the values this job holds (a hostile sandbox skips its own).
      const mask = new SecretMask();
      const maskCopies: Uint8Array[] = [];
      const maskWith = (value: Uint8Array): void => {
        const copy = new Uint8Array(value);
        maskCopies.push(copy);
        mask.add(copy);
      };
      let settled = false;
      const settle = (): void => {
        settled = true;
        clearTimeout(softTimer);
        clearTimeout(hardTimer);
        clearTimeout(killTimer);
        options.signal?.removeEventListener('abort', onAbort);
        this.#onMessage = null;
        this.#onDeath = null;
        this.#job = null;
        this.#host.setJob(null);
        for (const c of maskCopies) c.fill(0);
      };
      const fail = (err: FleetError): void => {
        if (settled) return;
        settle();
        reject(err);
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

      this.#job = { id: message.jobId, fail };
      this.#onDeath = (err) => {
        settle();
        reject(stopping ? stopError(stopping, options.timeoutMs) : err);
      };
      const limit = (problem: string): void => this.#violate('SANDBOX_LIMIT', problem);
      this.#onMessage = (msg) => {
        if (++messages > limits.maxMessagesPerJob) {
          limit(`it sent more than ${limits.maxMessagesPerJob} messages in one job (maxMessagesPerJob)`);
          return;
        }
        switch (msg.type) {
          case 'progress': {
            const bytes = jsonBytes(msg.value);
            if (bytes === null || bytes > limits.maxProgressBytes) {
              limit(
                `a progress value of ${bytes ?? 'unmeasurable'} bytes, above maxProgressBytes=${limits.maxProgressBytes}`,
              );
              return;
            }
            options.onProgress?.(mask.value(msg.value));
            break;
          }
          case 'log': {
            logLines += 1;
            // Characters, counted as the entry counts them.
            const bytes = msg.msg.length + (msg.fields ? (jsonLength(msg.fields) ?? Infinity) : 0);
            logBytes += bytes;
            // The entry adds one warning line when it starts dropping, so one line more is honest.
            if (logLines > limits.maxLogLines + 1 || logBytes > limits.maxLogBytes + 1024) {
              limit(
                `log output past its limits (${logLines} lines, ${logBytes} bytes; maxLogLines=${limits.maxLogLines}, maxLogBytes=${limits.maxLogBytes})`,
              );
              return;
            }
            options.onLog?.(
              msg.level,
              mask.text(msg.msg),
              msg.fields ? mask.fields(msg.fields) : undefined,
              msg.source,
            );
            break;
          }
          case 'secret-request':
            if (pending.has(msg.reqId)) {
              this.#violate('SANDBOX_PROTOCOL', `secret request id ${msg.reqId} reused while it is pending`);
              return;
            }
            if (++secretRequests > limits.maxSecretRequests) {
              limit(`more than ${limits.maxSecretRequests} secret requests in one job (maxSecretRequests)`);
              return;
            }
            pending.add(msg.reqId);
            this.#serveSecret(msg.reqId, msg.name, options.onSecretRequest, {
              granted: (value, parts) => {
                pending.delete(msg.reqId);
                if (!settled) for (const v of [value, ...(parts ?? [])]) maskWith(v);
                return !settled;
              },
              denied: () => {
                pending.delete(msg.reqId);
                if (!settled && ++deniedRequests > limits.maxDeniedSecretRequests)
                  limit(
                    `more than ${limits.maxDeniedSecretRequests} denied secret requests in one job (maxDeniedSecretRequests)`,
                  );
              },
            });
            break;
          case 'done':
            this.lastHeapUsedBytes = msg.heapUsedBytes;
            if (!msg.ok) {
              settle();
              reject(stopping ? stopError(stopping, options.timeoutMs) : errorFromSandbox(msg.error, mask));
              return;
            }
            this.#finish(msg, mask, settle, resolve, reject);
            break;
          default:
            this.#violate('SANDBOX_PROTOCOL', `a "${msg.type}" message while a job was running`);
        }
      };
      if (options.signal?.aborted) onAbort();
      else options.signal?.addEventListener('abort', onAbort, { once: true });
      this.#host.setJob(message.jobId);
      // Secret bytes are transferred to a thread; for a process they are written onto its channel
      // and this side's bytes are zero-filled as soon as they have left. The supervisor's mask
      // keeps a copy until the job ends.
      for (const s of message.secrets) maskWith(s.value);
      for (const part of options.maskAlso ?? []) maskWith(part);
      const secrets = message.secrets.map((s) => ({ name: s.name, version: s.version, value: ownBuffer(s.value) }));
      const values = secrets.map((s) => s.value);
      try {
        this.#host.post(
          { ...message, secrets },
          values.map((v) => v.buffer),
          () => {
            for (const v of values) if (v.byteLength) v.fill(0);
          },
        );
      } catch (err) {
        for (const v of values) v.fill(0);
        settle();
        reject(new FleetError('INVALID_PAYLOAD', `the job could not be handed to its sandbox: ${String(err)}`));
      }
    });
  }

  /** A successful `done`: the result checked against its limit, parsed and masked here. */
  #finish(
    msg: ParsedFromSandbox & { type: 'done'; ok: true },
    mask: SecretMask,
    settle: () => void,
    resolve: (r: RunResult) => void,
    reject: (e: Error) => void,
  ): void {
    const bytes = Buffer.byteLength(msg.resultJson);
    if (bytes > this.#maxResultBytes) {
      settle();
      reject(
        new FleetError(
          'RESULT_TOO_LARGE',
          `result is ${bytes} bytes, above maxResultBytes=${this.#maxResultBytes}. Fix: store large output elsewhere and return a reference.`,
        ),
      );
      return;
    }
    let result: unknown;
    try {
      result = JSON.parse(msg.resultJson);
    } catch {
      this.#violate('SANDBOX_PROTOCOL', 'a result that is not JSON');
      return;
    }
    settle();
    let resultJson = msg.resultJson;
    if (!mask.empty) {
      // Masked in its canonical JSON form: escapes a sandbox chose (`\u0073…`) are undone by the
      // parse above, so the text it sent is not what would be stored.
      resultJson = JSON.stringify(result) ?? 'null';
      const masked = mask.text(resultJson);
      if (masked !== resultJson) {
        resultJson = masked;
        try {
          result = JSON.parse(masked);
        } catch {
          result = masked;
          resultJson = JSON.stringify(masked);
        }
      }
    }
    // The cgroup's figures where there is one: measured outside the sandbox, not reported by it.
    const usage = this.#host.usage();
    resolve({
      resultJson,
      result,
      cpuMs: usage?.cpuMs ?? msg.cpuMs,
      ...(usage?.peakMemoryBytes != null ? { peakMemoryBytes: usage.peakMemoryBytes } : {}),
      heapUsedBytes: msg.heapUsedBytes,
      peakHeapBytes: msg.peakHeapBytes,
      secretsZeroed: msg.secretsZeroed,
      ...(msg.value ? { value: msg.value } : {}),
    });
  }

  #serveSecret(
    reqId: number,
    name: string,
    serve: RunOptions['onSecretRequest'],
    outcome: { granted: (value: Uint8Array, maskAlso?: readonly Uint8Array[]) => boolean; denied: () => void },
  ): void {
    const fail = (err: unknown): void => {
      this.#post({ type: 'secret', reqId, ok: false, error: serializeError(err) });
      outcome.denied();
    };
    if (!serve) {
      fail(new SecretScopeError(`this job type declares no secrets; "${name}" is not available`));
      return;
    }
    serve(name).then(({ value, version, maskAlso }) => {
      // Transfer, not copy: after this the bytes exist only in the sandbox (and the job's mask).
      const own = ownBuffer(value);
      if (this.#dead || !outcome.granted(own, maskAlso)) {
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
    if (this.#dead) return;
    try {
      this.#host.post(msg);
    } catch {
      // Only a message too large for the channel throws, and these are small.
    }
  }

  /** Ends the sandbox; everything it held (module state, secrets, heap, private /tmp) goes with it. */
  async destroy(): Promise<void> {
    this.#dead = true;
    this.#onDeath = null;
    this.#job = null;
    this.#host.setJob(null);
    await this.#host.kill();
    live.delete(this);
  }
}
