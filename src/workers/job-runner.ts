import { UnrecoverableError, WaitingError, type Job } from 'bullmq';
import type { FleetConfig, JobType } from '../config/resolve.js';
import { FleetError, ProcessorError, ValidationError, formatFailedReason, toError } from '../errors.js';
import type { FleetEventBus, JobOutcome } from '../events.js';
import type { Logger } from '../observability/logger.js';
import type { JobSecrets, SecretBroker } from '../secrets/broker.js';
import type { InjectionRegistry } from '../secrets/injection.js';
import type { SandboxPool } from './sandbox-pool.js';

const OUTCOME_BY_CODE: Partial<Record<string, JobOutcome>> = {
  TIMEOUT: 'timeout',
  CANCELLED: 'cancelled',
  MEMORY_LIMIT: 'oom',
  SANDBOX_CRASHED: 'crashed',
  SANDBOX_PROTOCOL: 'violation',
  SANDBOX_LIMIT: 'violation',
};

/**
 * Progress writes to Redis, at most one in flight and one per `intervalMs`: the newest value wins,
 * so a sandbox reporting progress in a loop costs Redis a few writes a second, not one per call.
 */
function progressWriter(
  write: (value: number | object) => Promise<void>,
  onError: (err: unknown) => void,
  intervalMs = 100,
): { push(value: number | object): void; flush(): Promise<void> } {
  let latest: { value: number | object } | null = null;
  let running: Promise<void> | null = null;
  let timer: NodeJS.Timeout | null = null;
  const pump = (): void => {
    if (running || timer || !latest) return;
    const { value } = latest;
    latest = null;
    running = write(value)
      .catch(onError)
      .finally(() => {
        running = null;
        timer = setTimeout(() => {
          timer = null;
          pump();
        }, intervalMs);
      });
  };
  return {
    push(value) {
      latest = { value };
      pump();
    },
    async flush() {
      if (timer) clearTimeout(timer);
      timer = null;
      await running;
      const last = latest;
      latest = null;
      if (last) await write(last.value).catch(onError);
    },
  };
}

export interface JobRunnerDeps {
  config: FleetConfig;
  events: FleetEventBus;
  log: Logger;
  pools: ReadonlyMap<string, SandboxPool>;
  /** Running jobs' abort controllers, shared with the supervisor (cancellation, drain, status). */
  active: Map<string, AbortController>;
  /** The secret broker, once the supervisor has started its providers. */
  broker: () => SecretBroker | null;
  /** Placeholders of injected secrets, when a type injects any. */
  injections: () => InjectionRegistry | null;
}

/**
 * One job, start to end: the payload checked again (Redis is writable by anyone with its
 * credentials), the type's secrets fetched while a sandbox is taken, handed over (delivered values
 * into the sandbox, injected ones as placeholders), the run under the type's timeout, the outcome
 * reported, and everything given out taken back: values zeroed, placeholders retired, job tokens
 * revoked, the sandbox returned or replaced. The supervisor around it owns the lifecycle.
 */
export class JobRunner {
  readonly #d: JobRunnerDeps;

  constructor(deps: JobRunnerDeps) {
    this.#d = deps;
  }

  async run(t: JobType, job: Job, token: string | undefined): Promise<unknown> {
    const jobId = job.id;
    const pool = this.#d.pools.get(t.name);
    if (jobId === undefined || !pool)
      throw new Error(`job runner got ${jobId ? `type ${t.name} without a pool` : 'a job without id'}`);
    const log = this.#d.log.scope({ jobId, jobType: t.name });
    const started = Date.now();
    const attempt = job.attemptsMade + 1;
    this.#d.events.emit('job:started', { jobId, jobType: t.name, attempt, queuedMs: started - job.timestamp });

    const controller = new AbortController();
    this.#d.active.set(jobId, controller);
    let sandbox: Awaited<ReturnType<SandboxPool['acquire']>> | null = null;
    let clean = false;
    const broker = this.#d.broker();
    if (!broker) throw new Error('job runner used before the supervisor started');
    const secrets: JobSecrets = broker.forJob(t, jobId);
    const injections = this.#d.injections();
    try {
      // Jobs can be written to Redis by anyone holding its credentials; check again here.
      const parsed = t.payload.safeParse(job.data);
      if (!parsed.success)
        throw new ValidationError(
          `payload does not match the schema of "${t.name}": ${parsed.error.issues[0]?.message ?? ''}`,
        );
      // The declared secrets are fetched while a sandbox is taken, then handed over with the job.
      const [acquired, handed] = await Promise.allSettled([pool.acquire(), secrets.fetchForSandbox(injections)]);
      if (acquired.status === 'fulfilled') sandbox = acquired.value;
      if (handed.status === 'rejected') throw handed.reason;
      if (acquired.status === 'rejected') {
        for (const s of handed.value.deliver) s.value.fill(0);
        throw acquired.reason;
      }
      const { deliver, placeholders } = handed.value;
      const progress = progressWriter(
        (value) => job.updateProgress(value),
        (e: unknown) => log.warn('progress not saved', { error: toError(e).message }),
      );
      const result = await acquired.value.run(
        {
          type: 'run',
          jobId,
          jobType: t.name,
          attempt,
          data: parsed.data,
          secretNames: [...t.secrets],
          secrets: deliver,
          ...(placeholders.length ? { placeholders } : {}),
        },
        {
          timeoutMs: t.timeoutMs,
          abortGraceMs: t.abortGraceMs,
          signal: controller.signal,
          onProgress: (value) =>
            progress.push(typeof value === 'number' || (typeof value === 'object' && value) ? value : { value }),
          onLog: (level, msg, fields, source) => {
            // The sandbox's fields nested, never merged: they cannot stand in for the scope's own
            // (jobId, jobType) nor make a line look like the supervisor's (component, audit).
            log[level](msg, { source, ...(fields ? { fields } : {}) });
            void job.log(`${level}: ${msg}`).catch(() => undefined);
          },
          onSecretRequest: (name) => secrets.request(name),
          maskAlso: deliver.flatMap((s) => s.maskAlso ?? []),
        },
      );
      clean = true;
      await progress.flush();
      this.#d.events.emit('job:finished', {
        jobId,
        jobType: t.name,
        outcome: 'completed',
        durationMs: Date.now() - started,
        willRetry: false,
        cpuMs: result.cpuMs,
        peakHeapBytes: result.peakHeapBytes,
        ...(result.peakMemoryBytes !== undefined ? { peakMemoryBytes: result.peakMemoryBytes } : {}),
      });
      return result.result;
    } catch (caught) {
      const err =
        caught instanceof FleetError ? caught : new ProcessorError(toError(caught).message, { cause: caught });
      if (err.code === 'SHUTDOWN' && token) {
        // Not a failure: the job goes back to wait for another supervisor, attempts untouched.
        await job.moveToWait(token);
        this.#d.events.emit('job:finished', {
          jobId,
          jobType: t.name,
          outcome: 'requeued',
          durationMs: Date.now() - started,
          willRetry: true,
        });
        log.info('job returned to the queue on shutdown');
        throw new WaitingError();
      }
      const retryable = err.retryable && !(err.code === 'TIMEOUT' && !t.retryOnTimeout);
      const willRetry = retryable && attempt < (job.opts.attempts ?? 1);
      const outcome = OUTCOME_BY_CODE[err.code] ?? 'failed';
      this.#d.events.emit('job:finished', {
        jobId,
        jobType: t.name,
        outcome,
        durationMs: Date.now() - started,
        errorCode: err.code,
        willRetry,
      });
      log.warn('job failed', { errorCode: err.code, error: err.message, attempt, willRetry });
      const reason = formatFailedReason(err);
      const out = retryable ? new Error(reason) : new UnrecoverableError(reason);
      out.stack = `${out.name}: ${reason}\n${err.stack?.split('\n').slice(1).join('\n') ?? ''}`;
      throw out;
    } finally {
      this.#d.active.delete(jobId);
      // A job that threw leaves a healthy sandbox; one that was terminated (timeout, OOM, crash,
      // cancel) is dead and gets replaced.
      if (sandbox) pool.release(sandbox, clean || sandbox.alive);
      // The sandbox zeroed its copies (or was destroyed); injected values are zero-filled and their
      // placeholders retired; credentials minted for the job are revoked.
      await secrets.release();
    }
  }
}
