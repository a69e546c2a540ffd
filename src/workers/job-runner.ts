import { UnrecoverableError, WaitingError, type Job } from 'bullmq';
import type { FleetConfig, JobType } from '../config/resolve.js';
import {
  DataKeyUnavailableError,
  FleetError,
  ProcessorError,
  ValidationError,
  formatFailedReason,
  toError,
} from '../errors.js';
import type { FleetEventBus, JobOutcome } from '../events.js';
import { warnOnFailure, type Logger } from '../observability/logger.js';
import type { JobSecrets, SecretBroker } from '../secrets/broker.js';
import type { DataKeyRing } from '../secrets/data-key.js';
import type { SealContext, SealedField } from '../secrets/job-data-seal.js';
import type { InjectionRegistry } from '../secrets/injection.js';
import type { SandboxPool } from './sandbox-pool.js';
import type { Sandbox } from './sandbox.js';
import { ANY_JSON_PAYLOAD } from '../config/job-types.js';

/** What a job's secrets are handed to its sandbox as: delivered values and injected placeholders. */
type Handed = Awaited<ReturnType<JobSecrets['fetchForSandbox']>>;

const OUTCOME_BY_CODE: Partial<Record<string, JobOutcome>> = {
  TIMEOUT: 'timeout',
  CANCELLED: 'cancelled',
  MEMORY_LIMIT: 'oom',
  SANDBOX_CRASHED: 'crashed',
  SANDBOX_SPAWNER_DIED: 'crashed',
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
  /** The data key, when a type seals its data at rest (`encryptData`). */
  dataKeys: () => DataKeyRing | null;
}

/**
 * What this job writes back to Redis, as it is stored: sealed under the data key for a type with
 * `encryptData` (after the sandbox's output was masked), as it is otherwise.
 */
interface JobData {
  payload(): Promise<unknown>;
  value(field: 'result' | 'progress', value: unknown): Promise<unknown>;
  text(field: 'log', text: string): Promise<string>;
  /** BullMQ's failedReason: `[CODE] message`, the message sealed; never the plaintext. */
  failure(err: FleetError): Promise<string>;
}

function plainData(job: Job): JobData {
  return {
    payload: () => Promise.resolve(job.data),
    value: (_f, v) => Promise.resolve(v),
    text: (_f, t) => Promise.resolve(t),
    failure: (err) => Promise.resolve(formatFailedReason(err)),
  };
}

function sealedData(t: JobType, job: Job, jobId: string, ring: DataKeyRing | null): JobData {
  const ctx = (field: SealedField): SealContext => ({ jobType: t.name, jobId, owner: job.name, field });
  const keys = (): Promise<DataKeyRing> =>
    ring
      ? Promise.resolve(ring)
      : Promise.reject(
          new DataKeyUnavailableError(`type "${t.name}" seals its data at rest but the supervisor has no data key`),
        );
  return {
    payload: async () => (await keys()).open(ctx('payload'), job.data),
    value: async (field, v) => (await keys()).seal(ctx(field), v),
    text: async (field, text) => (await keys()).sealText(ctx(field), text),
    failure: async (err) => {
      try {
        return `[${err.code}] ${await (await keys()).sealText(ctx('failure'), err.message)}`;
      } catch {
        return `[${err.code}] (message withheld: the data key to seal it is unavailable)`;
      }
    },
  };
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

    const broker = this.#d.broker();
    if (!broker) throw new Error('job runner used before the supervisor started');
    // A type without secrets takes no lease and hands nothing over; a sandbox that asks for one
    // anyway still goes through the broker (denied and audited), which is made for it then.
    let secrets: JobSecrets | null = t.secrets.length ? broker.forJob(t, jobId) : null;
    const injections = this.#d.injections();
    const stored = t.encryptData ? sealedData(t, job, jobId, this.#d.dataKeys()) : plainData(job);
    let sandbox: Sandbox | null = null;
    let clean = false;
    const controller = new AbortController();
    // Registered right before the try whose finally removes it: nothing between can throw.
    this.#d.active.set(jobId, controller);
    try {
      const data = await stored.payload().catch(async (err: unknown) => {
        // A payload written in plaintext around the fleet's producers does not stay at rest.
        if (err instanceof FleetError && err.code === 'JOB_DATA_NOT_SEALED')
          await job
            .updateData({ $removed: 'the plaintext payload was removed (JOB_DATA_NOT_SEALED)' })
            .catch(warnOnFailure(log, 'could not remove an unsealed payload from Redis; remove the job by hand'));
        throw err;
      });
      // Jobs can be written to Redis by anyone holding its credentials; check again here. (The
      // default schema takes any JSON value, and `data` is JSON.parse's output: nothing to check.)
      const parsed = t.payload === ANY_JSON_PAYLOAD ? { success: true as const, data } : t.payload.safeParse(data);
      if (!parsed.success)
        throw new ValidationError(
          `payload does not match the schema of "${t.name}": ${parsed.error.issues[0]?.message ?? ''}`,
        );
      let handed: Handed = { deliver: [], placeholders: [] };
      let box: Sandbox;
      if (secrets) {
        // The declared secrets are fetched while a sandbox is taken, then handed over with the job.
        const [acquired, fetched] = await Promise.allSettled([pool.acquire(), secrets.fetchForSandbox(injections)]);
        if (acquired.status === 'fulfilled') sandbox = acquired.value;
        if (fetched.status === 'rejected') throw fetched.reason;
        if (acquired.status === 'rejected') {
          for (const s of fetched.value.deliver) s.value.fill(0);
          throw acquired.reason;
        }
        handed = fetched.value;
        box = acquired.value;
      } else box = sandbox = await pool.acquire();
      const { deliver, placeholders } = handed;
      const progress = progressWriter(
        async (value) => {
          const v = await stored.value('progress', value);
          // A sealed value is an object; BullMQ's type says number | object.
          await job.updateProgress(typeof v === 'number' || (typeof v === 'object' && v) ? v : { value: v });
        },
        (e: unknown) => log.warn('progress not saved', { error: toError(e).message }),
      );
      const result = await box.run(
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
            void stored
              .text('log', `${level}: ${msg}`)
              .then((line) => job.log(line))
              .catch(warnOnFailure(log, 'a job log line was not copied to Redis (it is in the supervisor log)'));
          },
          onSecretRequest: (name) => (secrets ??= broker.forJob(t, jobId)).request(name),
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
      return await stored.value('result', result.result);
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
      const reason = await stored.failure(err);
      const out = retryable ? new Error(reason) : new UnrecoverableError(reason);
      // BullMQ stores the stack too: for a sealed type, the frames (text the sandbox sent) stay out.
      out.stack = t.encryptData
        ? `${out.name}: ${reason}`
        : `${out.name}: ${reason}\n${err.stack?.split('\n').slice(1).join('\n') ?? ''}`;
      throw out;
    } finally {
      this.#d.active.delete(jobId);
      // A job that threw leaves a healthy sandbox; one that was terminated (timeout, OOM, crash,
      // cancel) is dead and gets replaced.
      if (sandbox) pool.release(sandbox, clean || sandbox.alive);
      // The sandbox zeroed its copies (or was destroyed); injected values are zero-filled and their
      // placeholders retired; credentials minted for the job are revoked.
      await secrets?.release();
    }
  }
}
