import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { Queue, Worker } from 'bullmq';
import type { RedisClient } from '../redis/connection.js';
import type { FleetConfig, JobType } from '../config/resolve.js';
import { toError, ConfigError } from '../errors.js';
import { Lifecycle } from '../lifecycle.js';
import { FleetEventBus, type LifecycleState } from '../events.js';
import { silentLogger, warnOnFailure, type Logger } from '../observability/logger.js';
import { connectRedis, duplicateClient, waitForRedis } from '../redis/connection.js';
import { controlChannel, queuePrefix, supervisorsKey } from '../redis/keys.js';
import type { VerifyReport } from '../secrets/audit-chain.js';
import { InjectionRegistry } from '../secrets/injection.js';
import type { ProviderKind, SecretProvider } from '../secrets/provider.js';
import { parseControlMessage } from './control.js';
import { JobRunner } from './job-runner.js';
import { SandboxPool, type ProcessBoundary } from './sandbox-pool.js';
import { queueDepths, type SupervisorStatus } from './supervisor-status.js';
import { SupervisorSecrets } from './supervisor-secrets.js';

export type { SupervisorStatus } from './supervisor-status.js';
import { prepareProcessBoundary } from './supervisor-boundary.js';

export interface SupervisorOptions {
  config: FleetConfig;
  /** @defaultValue config.redis.url */
  redisUrl?: string;
  /**
   * A connection (as the `worker` Redis role) the caller owns and closes, as app.ts passes one:
   * the supervisor then neither opens nor closes its main connection. @defaultValue one of its own, to redisUrl
   */
  redis?: RedisClient;
  /**
   * The secret backends the broker reads through, opened with the supervisor's identity (app.ts
   * passes them); the caller owns and closes them. @defaultValue its own, from the config
   */
  providers?: ReadonlyMap<ProviderKind, SecretProvider>;
  logger?: Logger;
  events?: FleetEventBus;
  /** Only these job types; @defaultValue all */
  jobTypes?: readonly string[];
  /** @defaultValue `<hostname>-<pid>-<random>` */
  supervisorId?: string;
  /**
   * Audit records without the MAC chain: only the baseline `npm run bench` measures the chain's
   * cost against. Not a configuration setting. @defaultValue true
   */
  sealAudit?: boolean;
}

/**
 * Takes jobs from Redis and runs each one in a sandbox of its type, with the type's hard timeout,
 * memory limit and concurrency. Stateless: supervisors on many hosts share the work.
 *
 * Lifecycle: `starting → running → draining → stopped` (or `failed` if start-up fails).
 */
export class Supervisor {
  readonly id: string;
  readonly events: FleetEventBus;
  readonly #config: FleetConfig;
  readonly #log: Logger;
  readonly #redisUrl: string;
  readonly #types: JobType[];
  readonly #pools = new Map<string, SandboxPool>();
  /** The per-job path: validation, secrets hand-off, the sandbox run, outcome and clean-up. */
  readonly #runner: JobRunner;
  readonly #workers = new Map<string, Worker>();
  readonly #queues = new Map<string, Queue>();
  /** Running jobs, so cancellation and shutdown can reach them. */
  readonly #active = new Map<string, AbortController>();
  #redis: RedisClient | null = null;
  /** Providers, broker, audit log, data key and dynamic-lease ledger (supervisor-secrets.ts). */
  #secrets: SupervisorSecrets | null = null;
  #injections: InjectionRegistry | null = null;
  readonly #sealAudit: boolean;
  readonly #givenRedis: RedisClient | null;
  readonly #givenProviders: ReadonlyMap<ProviderKind, SecretProvider> | null;
  #subscriber: RedisClient | null = null;
  #heartbeat: NodeJS.Timeout | null = null;
  readonly #life = new Lifecycle('supervisor', (state, previous) => this.#onState(state, previous));
  /** start()'s run, so that a stop() during start-up waits for it before draining. */
  #starting: Promise<void> | null = null;
  /** Unsubscribes of the supervisor's own listeners on its event bus (removed when it stops). */
  readonly #listeners: (() => void)[] = [];
  #startedAt = 0;
  #stopping: Promise<void> | null = null;

  constructor(options: SupervisorOptions) {
    this.#config = options.config;
    this.events = options.events ?? new FleetEventBus();
    this.id = options.supervisorId ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
    this.#sealAudit = options.sealAudit ?? true;
    this.#givenRedis = options.redis ?? null;
    this.#givenProviders = options.providers ?? null;
    this.#log = (options.logger ?? silentLogger).scope({ supervisorId: this.id });
    this.#runner = new JobRunner({
      config: this.#config,
      events: this.events,
      log: this.#log,
      pools: this.#pools,
      active: this.#active,
      broker: () => this.#secrets?.broker ?? null,
      injections: () => this.#injections,
      dataKeys: () => this.#secrets?.dataKeys ?? null,
    });
    const url = options.redisUrl ?? options.config.redis.url;
    if (!url) throw new ConfigError('the supervisor needs Redis. Fix: set REDIS_URL or redis.url.');
    this.#redisUrl = url;
    const wanted = options.jobTypes ?? [...options.config.jobTypes.keys()];
    this.#types = wanted.map((n) => {
      const t = options.config.jobTypes.get(n);
      if (!t) throw new ConfigError(`supervisor asked to run unknown job type "${n}"`);
      return t;
    });
  }

  /** The lifecycle state; null before start(). */
  get state(): LifecycleState | null {
    const s = this.#life.state;
    return s === 'new' ? null : s;
  }

  #setState(state: LifecycleState): void {
    this.#life.to(state);
  }

  #onState(state: LifecycleState, previous: LifecycleState | 'new'): void {
    const prev = previous === 'new' ? null : previous;
    this.#log.info(`supervisor ${state}`, { state, previous: prev });
    this.events.emit('supervisor:state', { supervisorId: this.id, state, previous: prev });
    if (state === 'running' || state === 'draining')
      void this.#beat().catch(
        warnOnFailure(this.#log, 'heartbeat not written to Redis; `fleet status` may miss this supervisor'),
      );
  }

  /**
   * Connects, starts the secret providers, the sandbox pools and one BullMQ worker per type. Once
   * per instance: a second call, or a call after stop(), throws IllegalStateError. A start that
   * fails closes what it opened (state `failed`) before it rethrows.
   */
  start(): Promise<void> {
    try {
      this.#setState('starting');
    } catch (err) {
      return Promise.reject(err);
    }
    this.#starting = this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    this.#startedAt = Date.now();
    try {
      this.#redis = this.#givenRedis ?? connectRedis(this.#redisUrl, 'worker', { tls: this.#config.redis.tls });
      if (!this.#givenRedis)
        this.#redis.on('error', (err) =>
          this.#log.warn('redis connection error; reconnecting', { error: err.message }),
        );
      await waitForRedis(this.#redis);
      this.#secrets = await SupervisorSecrets.open({
        config: this.#config,
        redis: this.#redis,
        types: this.#types,
        supervisorId: this.id,
        log: this.#log,
        events: this.events,
        providers: this.#givenProviders,
        sealAudit: this.#sealAudit,
      });

      const boundary = await this.#processBoundary();
      // Every pool's start is waited for, also when one fails: a sandbox still starting in another
      // pool would otherwise be missed by the clean-up of a failed start.
      const started = await Promise.allSettled(
        this.#types.map(async (t) => {
          const pool = new SandboxPool(t, this.#log, this.events, boundary);
          this.#pools.set(t.name, pool);
          await pool.start();
        }),
      );
      const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      for (const t of this.#types) await this.#applyGlobalConcurrency(t);

      this.#subscriber = duplicateClient(this.#redis);
      this.#subscriber.on('error', (err) =>
        this.#log.warn('control channel error; reconnecting', { error: err.message }),
      );
      await this.#subscriber.subscribe(controlChannel(this.#config.redis.prefix));
      this.#subscriber.on('message', (_channel, raw: string) => this.#onControl(raw));

      for (const t of this.#types) this.#workers.set(t.name, this.#makeWorker(t));
      await Promise.all([...this.#workers.values()].map((w) => w.waitUntilReady()));

      this.#heartbeat = setInterval(
        () =>
          void this.#beat().catch(
            warnOnFailure(this.#log, 'heartbeat not written to Redis; `fleet status` may miss this supervisor'),
          ),
        this.#config.supervisor.heartbeatMs,
      );
      this.#heartbeat.unref();
      this.#setState('running');
    } catch (err) {
      this.#setState('failed');
      await this.#release();
      throw err;
    }
  }

  /**
   * The OS boundary of this supervisor's process sandboxes (see supervisor-boundary.ts), and the
   * audit of every refused connection and every sandbox killed for what it sent, with its job.
   */
  async #processBoundary(): Promise<ProcessBoundary> {
    const { boundary, injections } = await prepareProcessBoundary({
      config: this.#config,
      types: this.#types,
      redisUrl: this.#redisUrl,
      log: this.#log,
      events: this.events,
      workerId: this.id,
      audit: (rec) => this.#secrets?.broker.auditEvent(rec),
    });
    this.#injections = injections;
    // Evidence: every refused connection and every sandbox killed for what it sent, with its job.
    this.#listeners.push(
      this.events.on('egress:refused', (r) =>
        this.#secrets?.denied('egress refused', 'egress-refused', 'egress', r, `${r.destination}: ${r.reason}`, {
          destination: r.destination,
          reason: r.reason,
        }),
      ),
      this.events.on('sandbox:violation', (v) =>
        this.#secrets?.denied(
          'sandbox killed for a violation',
          'sandbox-violation',
          'supervisor',
          v,
          `${v.code}: ${v.problem.slice(0, 500)}`,
          {
            code: v.code,
            problem: v.problem,
          },
        ),
      ),
    );
    return boundary;
  }

  /** The main Redis connection; start() opens it (or takes the caller's). */
  get #db(): RedisClient {
    if (!this.#redis) throw new Error('the supervisor was used before start()');
    return this.#redis;
  }

  /** One BullMQ Queue per type for the supervisor's life (global concurrency, queue-depth gauges): a scrape builds none. */
  #queue(t: JobType): Queue {
    let q = this.#queues.get(t.name);
    if (!q) {
      q = new Queue(t.name, { connection: this.#db, prefix: queuePrefix(this.#config.redis.prefix, t.name) });
      q.on('error', (err) => this.#log.warn('queue error', { jobType: t.name, error: err.message }));
      this.#queues.set(t.name, q);
    }
    return q;
  }

  async #applyGlobalConcurrency(t: JobType): Promise<void> {
    const q = this.#queue(t);
    if (t.globalConcurrency !== undefined) await q.setGlobalConcurrency(t.globalConcurrency);
    else await q.removeGlobalConcurrency();
  }

  #makeWorker(t: JobType): Worker {
    const worker = new Worker(t.name, (job, token) => this.#runner.run(t, job, token), {
      connection: this.#db,
      prefix: queuePrefix(this.#config.redis.prefix, t.name),
      concurrency: t.concurrency,
      autorun: true,
      // The lock is renewed from this thread, which never runs job code, so it can stay short.
      lockDuration: this.#config.supervisor.lockDurationMs,
      stalledInterval: this.#config.supervisor.stalledIntervalMs,
      maxStalledCount: this.#config.supervisor.maxStalledCount,
    });
    worker.on('error', (err) => this.#log.warn('worker error', { jobType: t.name, error: err.message }));
    return worker;
  }

  #onControl(raw: string): void {
    const msg = parseControlMessage(raw);
    if (msg?.kind === 'cancel') {
      const ctl = this.#active.get(msg.jobId);
      if (ctl) {
        this.#log.info('cancelling job on request', { jobId: msg.jobId });
        ctl.abort('cancelled');
      }
    }
  }

  status(): SupervisorStatus {
    return {
      id: this.id,
      host: hostname(),
      pid: process.pid,
      state: this.state ?? 'starting',
      startedAt: this.#startedAt,
      updatedAt: Date.now(),
      types: this.#types.flatMap((t) => {
        const pool = this.#pools.get(t.name);
        if (!pool) return [];
        return [
          {
            ...pool.stats(),
            concurrency: t.concurrency,
            active: [...this.#active.keys()].filter((id) => id.startsWith(`${t.name}.`)).length,
          },
        ];
      }),
    };
  }

  /** Jobs in Redis per type and state, for the queue-depth gauges. */
  async queueCounts(): Promise<Record<string, Record<string, number>>> {
    const out: Record<string, Record<string, number>> = {};
    if (!this.#redis) return out;
    await Promise.all(this.#types.map(async (t) => (out[t.name] = await queueDepths(this.#queue(t)))));
    return out;
  }

  /** Readiness: RedisClient answers and every secret provider in use is reachable. */
  async ready(): Promise<Record<string, string>> {
    const checks: Record<string, string> = {};
    checks.state = this.state === 'running' ? 'ok' : `supervisor is ${this.state ?? 'not started'}`;
    try {
      checks.redis = this.#redis && (await this.#redis.ping()) === 'PONG' ? 'ok' : 'not connected';
    } catch (err) {
      checks.redis = toError(err).message;
    }
    for (const [kind, p] of this.#secrets?.providers ?? []) {
      checks[`secrets:${kind}`] = await p.check().then(
        () => 'ok',
        (err: unknown) => toError(err).message,
      );
    }
    checks.audit = this.#secrets?.auditReady
      ? 'ok'
      : `records wait for the audit MAC key "${this.#config.secrets.audit.macKey}" (see the log)`;
    return checks;
  }

  /** The audit chain's tail and this supervisor's own head, verified (see SupervisorSecrets). */
  checkAuditTail(): Promise<VerifyReport | null> {
    return this.#secrets?.checkAuditTail() ?? Promise.resolve(null);
  }

  async #beat(): Promise<void> {
    if (!this.#redis) return;
    await this.#redis.hset(supervisorsKey(this.#config.redis.prefix), this.id, JSON.stringify(this.status()));
    await this.#secrets?.sweepLedger();
  }

  /**
   * Graceful stop: take no new jobs, let running ones finish for up to `deadlineMs`, then abort
   * them; aborted jobs return to wait (nothing is lost). Idempotent.
   */
  stop(deadlineMs = this.#config.supervisor.shutdownDeadlineMs): Promise<void> {
    this.#stopping ??= this.#drain(deadlineMs);
    return this.#stopping;
  }

  async #drain(deadlineMs: number): Promise<void> {
    // A stop() during start-up waits for it: then drains what started, or closes a failed start.
    await this.#starting?.catch(() => undefined);
    if (this.#life.state === 'new' || this.#life.state === 'failed') {
      this.#setState('stopped');
      return;
    }
    if (this.#life.state === 'stopped') return;
    this.#setState('draining');
    const timer = setTimeout(() => {
      if (this.#active.size)
        this.#log.warn('shutdown deadline reached; returning running jobs to the queue', { jobs: this.#active.size });
      for (const ctl of this.#active.values()) ctl.abort('shutdown');
    }, deadlineMs);
    try {
      await Promise.all([...this.#workers.values()].map((w) => w.close()));
    } finally {
      clearTimeout(timer);
      await this.#release();
      this.#setState('stopped');
    }
  }

  async #release(): Promise<void> {
    for (const off of this.#listeners.splice(0)) off();
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
    await Promise.all([...this.#workers.values()].map((w) => w.close(true).catch(() => undefined)));
    await Promise.all([...this.#pools.values()].map((p) => p.close()));
    await Promise.all([...this.#queues.values()].map((q) => q.close().catch(() => undefined)));
    this.#queues.clear();
    await this.#secrets?.close();
    this.#secrets = null;
    if (this.#redis?.status === 'ready')
      await this.#redis
        .hdel(supervisorsKey(this.#config.redis.prefix), this.id)
        .catch(warnOnFailure(this.#log, 'heartbeat not removed at stop; it goes stale on its own'));
    this.#subscriber?.disconnect();
    if (!this.#givenRedis) this.#redis?.disconnect();
    this.#subscriber = null;
    this.#redis = null;
  }
}
