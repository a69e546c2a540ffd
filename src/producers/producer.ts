import { Queue, type Job, type JobsOptions } from 'bullmq';
import type { z } from 'zod';
import type { FleetConfig, JobType } from '../config/resolve.js';
import { FLEET_PRODUCER_NAMES } from '../config/schema.js';
import {
  ConfigError,
  FleetError,
  JobNotFoundError,
  RedisFullError,
  RedisUnavailableError,
  UnknownJobTypeError,
  ValidationError,
  toError,
} from '../errors.js';
import type { FleetEventBus } from '../events.js';
import { connectRedis, ensureReady, type RedisClient } from '../redis/connection.js';
import { controlChannel, idempotencyInFlightKey, queuePrefix } from '../redis/keys.js';
import { readAudit, type AuditQuery, type AuditRecord } from '../secrets/audit.js';
import type { DataKeyRing } from '../secrets/data-key.js';
import type { ControlMessage } from '../workers/control.js';
import { JobDataSealer } from './job-data-sealer.js';
import { IDEMPOTENCY_KEY, idempotentJobId, jobTypeOfId, newJobId } from './job-id.js';
import { jobTypeViewOf, jobViewOf, type JobState, type JobTypeView, type JobView } from './job-view.js';

/** How long an Idempotency-Key counts as in flight if its request dies before finishing. */
const IN_FLIGHT_MS = 10_000;

export interface EnqueueOptions {
  /** A repeat with the same key (same producer and type) returns the first job's id. */
  idempotencyKey?: string;
  /** Start no earlier than this many ms from now. @defaultValue 0 */
  delayMs?: number;
  /** Lower runs first (1 is highest), as in BullMQ. @defaultValue none */
  priority?: number;
}

export interface EnqueueResult {
  id: string;
  type: string;
}

/** Payload types of each job type of a config written with `defineConfig`. */
export type PayloadsOf<C extends { jobTypes: readonly { name: string; payloadSchema?: unknown }[] }> = {
  [J in C['jobTypes'][number] as J['name']]: J['payloadSchema'] extends z.ZodType
    ? z.input<J['payloadSchema']>
    : unknown;
};

export interface ProducerOptions {
  config: FleetConfig;
  /** An existing connection (kept open on close), or the URL to open one. @defaultValue config.redis.url */
  redis?: RedisClient | string;
  /**
   * Recorded as the owner of the jobs it enqueues (and with idempotency keys). Not the name of an
   * HTTP producer in `config.producers`: that producer would own, and read, these jobs.
   * @defaultValue `"client"`
   */
  name?: string;
  events?: FleetEventBus;
  via?: 'http' | 'client';
  /**
   * The data key sealing the job data of types with `encryptData` (and opening it in
   * {@link Producer.openJob}). `null`: this producer holds none (Bull Board, `fleet job`): it
   * shows such data sealed and refuses to enqueue such types. @defaultValue opened from the config
   * on first use (the data key's store, with this process's identity) and closed by close()
   */
  dataKeys?: DataKeyRing | null;
}

/** JSON with object keys sorted, so two equal payloads compare equal whatever their key order. */
function canonicalJson(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : x,
  );
}

/**
 * Enqueues jobs straight into Redis with the same validation as the HTTP API. The HTTP API is
 * built on it, so both paths behave the same.
 */
export class Producer<Payloads extends Record<string, unknown> = Record<string, unknown>> {
  readonly config: FleetConfig;
  readonly redis: RedisClient;
  readonly #ownsRedis: boolean;
  readonly #queues: Map<string, Queue>;
  readonly #name: string;
  readonly #events: FleetEventBus | undefined;
  readonly #via: 'http' | 'client';
  readonly #keys: JobDataSealer;
  readonly #ownsKeys: boolean;

  constructor(options: ProducerOptions, queues = new Map<string, Queue>(), keys?: JobDataSealer) {
    this.config = options.config;
    // withName() (keys given) is how the HTTP API acts as a configured producer; anything else
    // taking such a name would share that producer's jobs.
    if (keys === undefined && options.name !== undefined && this.config.producers.some((p) => p.name === options.name))
      throw new ConfigError(
        `a Producer named "${options.name}" would own its jobs together with the HTTP producer of that name (producers.${options.name}), which could then read them, sealed data in plaintext. Fix: give the in-process producer a name no entry of producers has.`,
      );
    const r = options.redis ?? options.config.redis.url;
    if (!r) throw new RedisUnavailableError('no Redis to enqueue into. Fix: set REDIS_URL or redis.url in the config.');
    this.#ownsRedis = typeof r === 'string';
    this.redis = typeof r === 'string' ? connectRedis(r, 'producer', { tls: options.config.redis.tls }) : r;
    this.#queues = queues;
    // Errors surface as rejections of the call that hit them; keep the emitter from throwing.
    if (this.#ownsRedis) this.redis.on('error', () => undefined);
    this.#name = options.name ?? FLEET_PRODUCER_NAMES.client;
    this.#events = options.events;
    this.#via = options.via ?? 'client';
    this.#ownsKeys = keys === undefined;
    this.#keys = keys ?? new JobDataSealer(options.dataKeys, this.config, this.redis);
  }

  /**
   * The same producer (connection, queues) under another name: idempotency keys are scoped per
   * name, so two services using the same key get two jobs. Closing it closes nothing shared.
   */
  withName(name: string): Producer<Payloads> {
    const opts: ProducerOptions = { config: this.config, redis: this.redis, name, via: this.#via };
    if (this.#events) opts.events = this.#events;
    return new Producer<Payloads>(opts, this.#queues, this.#keys);
  }

  jobType(name: string): JobType {
    const t = this.config.jobTypes.get(name);
    if (!t) {
      throw new UnknownJobTypeError(
        `unknown job type "${name}". Known: ${[...this.config.jobTypes.keys()].join(', ')}.`,
        {
          details: { jobType: name },
        },
      );
    }
    return t;
  }

  queue(name: string): Queue {
    let q = this.#queues.get(name);
    if (!q) {
      q = new Queue(name, { connection: this.redis, prefix: queuePrefix(this.config.redis.prefix, name) });
      // A Queue re-emits connection errors; the caller of add() gets them as rejections.
      q.on('error', () => undefined);
      this.#queues.set(name, q);
    }
    return q;
  }

  /** Validates a payload against its type's schema; throws {@link ValidationError} listing each problem. */
  validate(type: JobType, data: unknown): unknown {
    const r = type.payload.safeParse(data);
    if (r.success) return r.data;
    throw new ValidationError(`payload does not match the schema of "${type.name}"`, {
      details: {
        issues: r.error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message, code: i.code })),
      },
    });
  }

  #jobOptions(type: JobType, id: string, options: EnqueueOptions): JobsOptions {
    const o: JobsOptions = {
      jobId: id,
      attempts: type.attempts,
      backoff: { type: type.backoff.type, delay: type.backoff.delayMs },
      removeOnComplete: { age: type.keepCompletedSeconds },
      removeOnFail: { age: type.keepFailedSeconds },
    };
    if (options.delayMs) o.delay = options.delayMs;
    if (options.priority !== undefined) o.priority = options.priority;
    return o;
  }

  #idFor(type: JobType, options: EnqueueOptions): string {
    if (options.idempotencyKey === undefined) return newJobId(type.name);
    if (!IDEMPOTENCY_KEY.test(options.idempotencyKey)) {
      throw new FleetError('INVALID_REQUEST', 'Idempotency-Key must be 1–200 visible ASCII characters');
    }
    return idempotentJobId(type.name, this.#name, options.idempotencyKey);
  }

  /**
   * BullMQ checks a Queue's connection once, when the Queue is made, and keeps a failed check
   * forever. A Queue made while the connection was still coming up (Bull Board makes them at API
   * start; a Redis Cluster client reports 'connect' before 'ready') would refuse every later call,
   * so one whose check failed is replaced by a fresh one once Redis is ready.
   */
  async #readyQueue(name: string): Promise<Queue> {
    const q = this.queue(name);
    try {
      await q.waitUntilReady();
      return q;
    } catch {
      if (this.#queues.get(name) === q) this.#queues.delete(name);
      void q.close().catch(() => undefined);
      const fresh = this.queue(name);
      await fresh.waitUntilReady();
      return fresh;
    }
  }

  async #guard<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      await ensureReady(this.redis);
      return await fn();
    } catch (err) {
      if (err instanceof FleetError) throw err;
      const e = toError(err);
      if (/^OOM /.test(e.message)) {
        this.#events?.emit('redis:full', { operation: what });
        throw new RedisFullError(
          `${what} failed: Redis is full (used memory is above maxmemory, and noeviction keeps it from dropping jobs or audit records). Nothing was enqueued, and retrying will not help until memory is freed. Fix: raise maxmemory, or free memory: lower jobTypes.*.keepCompletedSeconds / keepFailedSeconds and secrets.audit.maxEntries, or remove old jobs.`,
          { cause: e },
        );
      }
      throw new RedisUnavailableError(
        `${what} failed: Redis is unreachable or refused the command (${e.message}). Nothing was enqueued; retry later.`,
        { cause: e },
      );
    }
  }

  async enqueue<T extends keyof Payloads & string>(
    typeName: T,
    data: Payloads[T],
    options: EnqueueOptions = {},
  ): Promise<EnqueueResult> {
    const type = this.jobType(typeName);
    const payload = this.validate(type, data);
    const id = this.#idFor(type, options);
    // Sealed before it leaves this process: Redis (its AOF, its replicas) never holds the plaintext.
    const stored = await this.#keys.seal(type, id, this.#name, payload);
    await this.#guard('enqueue', async () => {
      const q = await this.#readyQueue(type.name);
      const key = options.idempotencyKey;
      // The BullMQ job name records who enqueued it: the owner that may read and cancel it.
      if (key === undefined) {
        await q.add(this.#name, stored, this.#jobOptions(type, id, options));
        return;
      }
      // While the first request with a key is being enqueued, a second one gets 409 (IETF
      // Idempotency-Key draft); once the job exists, repeats compare bodies instead.
      const marker = idempotencyInFlightKey(this.config.redis.prefix, type.name, id);
      const first = (await this.redis.set(marker, '1', 'PX', IN_FLIGHT_MS, 'NX')) === 'OK';
      if (!first && !(await q.getJob(id))) {
        throw new FleetError(
          'IDEMPOTENCY_KEY_IN_FLIGHT',
          `a request with Idempotency-Key ${JSON.stringify(key)} is still being processed; retry after it completes.`,
          { retryable: true, details: { jobId: id } },
        );
      }
      try {
        await q.add(this.#name, stored, this.#jobOptions(type, id, options));
        await this.#sameBodyOrRefuse(q, type, [{ id, key, payload }]);
      } finally {
        if (first) await this.redis.del(marker);
      }
    });
    this.#events?.emit('job:enqueued', { jobType: type.name, count: 1, via: this.#via });
    return { id, type: type.name };
  }

  /**
   * The IETF Idempotency-Key rule: a key reused with a *different* body is refused (422), never
   * answered with the first job's id while the second body is dropped. BullMQ keeps the first job
   * when an id exists, so the stored payload is compared with the one just sent.
   */
  async #sameBodyOrRefuse(
    q: Queue,
    type: JobType,
    sent: { id: string; key: string; payload: unknown; index?: number }[],
  ): Promise<void> {
    const stored = await Promise.all(
      sent.map(async (s) => {
        const job = await q.getJob(s.id);
        return job ? { payload: await this.#keys.payloadOf(type, job) } : null;
      }),
    );
    sent.forEach((s, i) => {
      const job = stored[i];
      if (job && canonicalJson(job.payload) !== canonicalJson(s.payload)) {
        throw new FleetError(
          'IDEMPOTENCY_KEY_REUSED',
          `Idempotency-Key ${JSON.stringify(s.key)}${s.index === undefined ? '' : ` (jobs[${s.index}])`} was already used with a different body, for job ${s.id}. Fix: send a new key for a new request, or resend the original body.`,
          {
            details: { jobId: s.id, ...(s.index === undefined ? {} : { index: s.index }) },
          },
        );
      }
    });
  }

  /**
   * Enqueues many jobs of one type atomically (one MULTI). Every payload is validated first: one
   * invalid item rejects the whole batch and nothing is enqueued.
   */
  async enqueueBatch<T extends keyof Payloads & string>(
    typeName: T,
    items: readonly { data: Payloads[T]; idempotencyKey?: string; delayMs?: number; priority?: number }[],
  ): Promise<EnqueueResult[]> {
    const type = this.jobType(typeName);
    const problems: { index: number; issues: unknown }[] = [];
    const prepared = items.map((item, index) => {
      try {
        const payload = this.validate(type, item.data);
        const id = this.#idFor(type, item);
        return { id, payload, job: { name: this.#name, data: payload, opts: this.#jobOptions(type, id, item) } };
      } catch (err) {
        problems.push({
          index,
          issues: err instanceof FleetError ? (err.details?.issues ?? err.message) : toError(err).message,
        });
        return null;
      }
    });
    if (problems.length) {
      throw new ValidationError(`${problems.length} of ${items.length} payloads are invalid; nothing was enqueued`, {
        details: { items: problems },
      });
    }
    const jobs = prepared.filter((p) => p !== null);
    // The same key twice in one batch must carry the same body too.
    const keyed = items.flatMap((item, index) => {
      const prep = jobs[index];
      return item.idempotencyKey === undefined || !prep
        ? []
        : [{ id: prep.id, key: item.idempotencyKey, payload: prep.payload, index }];
    });
    const firstByKey = new Map<string, (typeof keyed)[number]>();
    for (const k of keyed) {
      const first = firstByKey.get(k.key);
      if (!first) firstByKey.set(k.key, k);
      else if (canonicalJson(first.payload) !== canonicalJson(k.payload)) {
        throw new FleetError(
          'IDEMPOTENCY_KEY_REUSED',
          `jobs[${k.index}] reuses the Idempotency-Key ${JSON.stringify(k.key)} of jobs[${first.index}] with a different body; nothing was enqueued.`,
          { details: { index: k.index, firstIndex: first.index } },
        );
      }
    }
    for (const p of jobs) p.job.data = await this.#keys.seal(type, p.id, this.#name, p.payload);
    await this.#guard('batch enqueue', async () => {
      const q = await this.#readyQueue(type.name);
      // Checked before adding: a refused batch enqueues nothing.
      if (keyed.length) await this.#sameBodyOrRefuse(q, type, [...firstByKey.values()]);
      await q.addBulk(jobs.map((p) => p.job));
    });
    this.#events?.emit('job:enqueued', { jobType: type.name, count: jobs.length, via: this.#via });
    return jobs.map((p) => ({ id: p.id, type: type.name }));
  }

  /**
   * The job and its state. The state is read first: a job hash read before a state that says
   * "finished" could miss the result or reason written at that transition.
   */
  async #find(id: string): Promise<{ type: JobType; job: Job; state: JobState }> {
    const typeName = jobTypeOfId(id);
    const type = typeName ? this.config.jobTypes.get(typeName) : undefined;
    const found = type
      ? await this.#guard('job lookup', async () => {
          const q = await this.#readyQueue(type.name);
          const state: JobState = await q.getJobState(id);
          return state === 'unknown' ? undefined : { state, job: await q.getJob(id) };
        })
      : undefined;
    if (!type || !found?.job)
      throw new JobNotFoundError(
        `no job with id "${id}" (finished jobs are kept for keepCompletedSeconds/keepFailedSeconds)`,
      );
    return { type, job: found.job, state: found.state };
  }

  async getJob(id: string): Promise<JobView> {
    const { type, job, state } = await this.#find(id);
    return jobViewOf(id, type, job, state);
  }

  /**
   * The view with its sealed fields opened (a type with `encryptData`; others are returned as
   * they are): for the job's owner only, which the caller checks. A field that cannot be opened
   * (tampered, sealed under a retired key) stays sealed, with the code of the reason beside it.
   */
  async openJob(view: JobView): Promise<JobView> {
    return this.#keys.openView(this.jobType(view.type), view);
  }

  /**
   * Cancels a job: a waiting or delayed one is removed; an active one is aborted in its sandbox
   * (the supervisor running it gets the message on the control channel). Finished jobs stay.
   */
  async cancel(
    id: string,
  ): Promise<{ id: string; previousState: JobState; outcome: 'removed' | 'cancelling' | 'already-finished' }> {
    const { job, state } = await this.#find(id);
    if (state === 'completed' || state === 'failed') return { id, previousState: state, outcome: 'already-finished' };
    if (state === 'active') {
      const msg: ControlMessage = { kind: 'cancel', jobId: id };
      await this.#guard('cancel', () =>
        this.redis.publish(controlChannel(this.config.redis.prefix), JSON.stringify(msg)),
      );
      return { id, previousState: state, outcome: 'cancelling' };
    }
    try {
      await job.remove();
      return { id, previousState: state, outcome: 'removed' };
    } catch {
      // It became active between the state read and the removal: cancel it where it runs.
      const msg: ControlMessage = { kind: 'cancel', jobId: id };
      await this.#guard('cancel', () =>
        this.redis.publish(controlChannel(this.config.redis.prefix), JSON.stringify(msg)),
      );
      return { id, previousState: 'active', outcome: 'cancelling' };
    }
  }

  /** Redis answers (waits for a connection in progress, up to the ready timeout). */
  async ping(): Promise<void> {
    await this.#guard('ping', () => this.redis.ping());
  }

  /** The secret-access audit log, newest first. */
  audit(query: AuditQuery): Promise<AuditRecord[]> {
    return this.#guard('audit read', () => readAudit(this.redis, this.config.redis.prefix, query));
  }

  listJobTypes(): JobTypeView[] {
    return [...this.config.jobTypes.values()].map(jobTypeViewOf);
  }

  async close(): Promise<void> {
    await Promise.all([...this.#queues.values()].map((q) => q.close()));
    this.#queues.clear();
    if (this.#ownsKeys) await this.#keys.close();
    if (this.#ownsRedis) this.redis.disconnect();
  }
}

/** Creates a {@link Producer}. Pass `PayloadsOf<typeof config>` as the type argument for typed payloads. */
export function createProducer<Payloads extends Record<string, unknown> = Record<string, unknown>>(
  options: ProducerOptions,
): Producer<Payloads> {
  return new Producer<Payloads>(options);
}
