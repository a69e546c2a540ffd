import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { Queue, Worker, type Job, type JobsOptions } from 'bullmq';
import type { z } from 'zod';
import { encryptsData, type FleetConfig } from '../config/resolve.js';
import { scheduleOf } from '../config/schedule.js';
import type { rotationSchema } from '../config/schema.js';
import { systemClock, type Clock } from '../clock.js';
import { Lifecycle, type ServiceState } from '../lifecycle.js';
import { FleetError, toError } from '../errors.js';
import type { FleetEventBus } from '../events.js';
import { silentLogger, type Logger } from '../observability/logger.js';
import { connectRedis, waitForRedis, type RedisClient } from '../redis/connection.js';
import { rotationQueuePrefix, rotationStateKey } from '../redis/keys.js';
import { openAuditLog, type AuditLog } from '../secrets/audit.js';
import type { AuditKeyRing } from '../secrets/audit-chain.js';
import { AuditRetention, type TrimOutcome } from '../secrets/audit-retention.js';
import type { ProviderKind, SecretProvider } from '../secrets/provider.js';
import { listSecrets, makeProvider, providerOfKind } from '../secrets/providers.js';
import { dataKeyRetirementWaits, ensureDataKey } from './data-key-use.js';
import { redisAclRotator } from './redis-acl-rotator.js';
import { RotationRun } from './rotation-run.js';
import { loadRotator, type Rotator } from './rotators.js';
import { sandboxedRotator } from './sandboxed-rotator.js';
import { secretHealth, type SecretHealth } from './secret-health.js';
import { readRotationState } from './state.js';

type RotationPolicy = z.output<typeof rotationSchema>;

export const ROTATION_QUEUE = 'rotation';

export function rotationQueue(config: FleetConfig, connection: RedisClient): Queue {
  return new Queue(ROTATION_QUEUE, { connection, prefix: rotationQueuePrefix(config.redis.prefix) });
}

/** Enqueues an immediate rotation of `secret` (used by `fleet rotate`). */
export function requestRotation(config: FleetConfig, queue: Queue, secret: string): Promise<Job> {
  const policy = config.secrets.items[secret]?.rotation;
  if (!policy)
    return Promise.reject(
      new FleetError(
        'INVALID_REQUEST',
        `secret "${secret}" has no rotation policy. Fix: add secrets.items.${secret}.rotation.`,
      ),
    );
  return queue.add(
    'rotate',
    { secret, force: true },
    { jobId: `rotate-now-${secret}-${Date.now()}`, ...rotationJobOptions(policy) },
  );
}

/** A rotation job's retries (the policy's) and how many finished ones BullMQ keeps. */
function rotationJobOptions(policy: RotationPolicy): JobsOptions {
  return {
    attempts: policy.attempts,
    backoff: { type: 'exponential', delay: policy.backoffMs },
    removeOnComplete: { count: 200 },
    removeOnFail: { count: 200 },
  };
}

/**
 * Keeps secrets fresh with BullMQ Job Schedulers on a dedicated queue with global concurrency 1.
 * Scheduler ids are fixed (`rotate-<secret>`), so any number of replicas can start at once and
 * upsert the same schedules: no duplicate schedules, no duplicate runs; a window missed while the
 * fleet was down runs once. Each rotation creates a pending version, lets the rotator apply and
 * test it, and only then promotes it; the previous version stays readable for the grace window and
 * the retire sweep retires it then (the steps: RotationRun). The service owns the lifecycle, the
 * schedules, the worker, the sweep and what they share: the connection, audit log, providers and rotators.
 */
export class RotationService {
  readonly #config: FleetConfig;
  #sweeps: Promise<void> = Promise.resolve();
  readonly #life = new Lifecycle('rotation scheduler');
  readonly #clock: Clock;
  #starting: Promise<void> | null = null;
  #stopping: Promise<void> | null = null;
  readonly #log: Logger;
  readonly #events: FleetEventBus;
  readonly #redisUrl: string;
  readonly #id = `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  readonly #retentionUrl: string;
  #retention: AuditRetention | null = null;
  #auditKeys: AuditKeyRing | null = null;
  readonly #givenRedis: RedisClient | null;
  #stopAuditKeys: (() => void) | null = null;
  #redis: RedisClient | null = null;
  #queue: Queue | null = null;
  #worker: Worker | null = null;
  #audit: AuditLog | null = null;
  #run: RotationRun | null = null;
  #sweeper: NodeJS.Timeout | null = null;
  readonly #providers = new Map<ProviderKind, SecretProvider>();
  readonly #openProvider: ((kind: ProviderKind) => Promise<SecretProvider>) | null;
  readonly #rotators = new Map<string, Rotator | 'kms-rewrap'>();

  constructor(options: {
    config: FleetConfig;
    redisUrl: string;
    /** A connection (as the `scheduler` Redis role) the caller owns and closes. @defaultValue one of its own, to redisUrl */
    redis?: RedisClient;
    /** The audit retention path's connection (the `retention` Redis role, the only one that may trim the audit stream). @defaultValue redisUrl */
    retentionUrl?: string;
    /**
     * Opens a secret backend with the rotator's identity, on first use of its kind (app.ts passes
     * it; a scheduler whose policies never touch Vault needs no rotator credentials). The service
     * closes what it opened. @defaultValue makeProvider with the config
     */
    openProvider?: (kind: ProviderKind) => Promise<SecretProvider>;
    events: FleetEventBus;
    logger?: Logger;
    /** When rotations are due and versions retire. @defaultValue the system clock */
    clock?: Clock;
  }) {
    this.#clock = options.clock ?? systemClock;
    this.#openProvider = options.openProvider ?? null;
    this.#config = options.config;
    this.#redisUrl = options.redisUrl;
    this.#retentionUrl = options.retentionUrl ?? options.redisUrl;
    this.#givenRedis = options.redis ?? null;
    this.#events = options.events;
    this.#log = (options.logger ?? silentLogger).scope({ component: 'rotation' });
  }

  /** Secrets with a rotation policy. */
  policies(): Map<string, RotationPolicy> {
    const out = new Map<string, RotationPolicy>();
    for (const [name, item] of Object.entries(this.#config.secrets.items))
      if (item.rotation) out.set(name, item.rotation);
    return out;
  }

  get queue(): Queue {
    if (!this.#queue) throw new Error('rotation service not started');
    return this.#queue;
  }

  /**
   * Connects, schedules every rotation policy and starts the rotation worker, the retire sweep and
   * audit retention. Once per instance (IllegalStateError otherwise); a start that fails closes
   * what it opened before it rethrows.
   */
  start(): Promise<void> {
    try {
      this.#life.to('starting');
    } catch (err) {
      return Promise.reject(err);
    }
    this.#starting = this.#start().then(
      () => this.#life.to('running'),
      async (err: unknown) => {
        this.#life.to('failed');
        await this.#release();
        throw err;
      },
    );
    return this.#starting;
  }

  get state(): ServiceState {
    return this.#life.state;
  }

  async #start(): Promise<void> {
    this.#redis = this.#givenRedis ?? connectRedis(this.#redisUrl, 'worker', { tls: this.#config.redis.tls });
    if (!this.#givenRedis)
      this.#redis.on('error', (err) => this.#log.warn('redis error; reconnecting', { error: err.message }));
    await waitForRedis(this.#redis);
    const prefix = rotationQueuePrefix(this.#config.redis.prefix);
    this.#queue = rotationQueue(this.#config, this.#redis);
    this.#queue.on('error', (err) => this.#log.warn('rotation queue error', { error: err.message }));
    const auditCfg = this.#config.secrets.audit;
    const opened = openAuditLog({
      redis: this.#redis,
      prefix: this.#config.redis.prefix,
      logger: this.#log,
      provider: await this.#provider(auditCfg.macKey),
      audit: auditCfg,
      writer: `rotation-${this.#id}`,
    });
    this.#audit = opened.log;
    this.#stopAuditKeys = opened.stop;
    this.#run = new RotationRun({
      config: this.#config,
      redis: this.#redis,
      audit: opened.log,
      events: this.#events,
      log: this.#log,
      clock: this.#clock,
      workerId: this.#id,
      provider: (secret) => this.#provider(secret),
      rotator: (secret) => this.#rotator(secret),
      sweep: () => this.sweep(),
    });
    const retention = new AuditRetention({
      config: this.#config,
      redisUrl: this.#retentionUrl,
      events: this.#events,
      log: this.#log,
      writer: `retention-${this.#id}`,
    });
    this.#retention = retention;
    void opened.keys.then(
      (k) => {
        this.#auditKeys = k;
        retention.useKeys(k);
      },
      () => undefined,
    );
    await this.#queue.setGlobalConcurrency(1);

    const policies = this.policies();
    for (const [name, policy] of policies) {
      const s = scheduleOf(policy.schedule);
      await this.#queue.upsertJobScheduler(
        `rotate-${name}`,
        'every' in s ? { every: s.every } : { pattern: s.pattern, ...(policy.tz ? { tz: policy.tz } : {}) },
        { name: 'rotate', data: { secret: name }, opts: rotationJobOptions(policy) },
      );
    }
    // Schedules of secrets that lost their policy are removed.
    for (const s of await this.#queue.getJobSchedulers()) {
      const name = s.key.startsWith('rotate-') ? s.key.slice('rotate-'.length) : null;
      if (name && !policies.has(name)) await this.#queue.removeJobScheduler(s.key);
    }

    const run = this.#run;
    this.#worker = new Worker(
      ROTATION_QUEUE,
      (job: Job<{ secret: string; force?: boolean }>) =>
        run.rotate(job.data.secret, { force: job.data.force === true, attempt: job.attemptsMade + 1 }),
      { connection: this.#redis, prefix, concurrency: 1 },
    );
    this.#worker.on('error', (err) => this.#log.warn('rotation worker error', { error: err.message }));
    await this.#worker.waitUntilReady();
    const sweepMs = Math.max(250, Math.min(30_000, ...[...policies.values()].map((p) => (p.graceSeconds * 1000) / 2)));
    this.#sweeper = setInterval(
      () =>
        void this.sweep().catch((err: unknown) =>
          this.#log.warn('retire sweep failed', { error: toError(err).message }),
        ),
      sweepMs,
    );
    this.#sweeper.unref();
    const kms = this.#config.secrets.kms;
    if (kms?.enableKeyRotation && [...this.#config.secretProviders.values()].includes('kms')) {
      await providerOfKind(await this.#providerOfKind('kms'), 'kms')
        .enableKeyRotation()
        .then(() => this.#log.info('KMS automatic rotation of the customer key is on', { keyId: kms.keyId }))
        .catch((err: unknown) =>
          this.#log.warn('could not enable KMS key rotation', { keyId: kms.keyId, error: toError(err).message }),
        );
    }
    if (encryptsData(this.#config))
      await ensureDataKey(this.#config, await this.#provider(this.#config.secrets.dataKey.name), this.#log);
    this.#log.info('rotation scheduler running', { secrets: [...policies.keys()] });
  }

  /** The Redis connection; start() opens it. */
  get #db(): RedisClient {
    if (!this.#redis) throw new FleetError('INTERNAL', 'the rotation service was used before start()');
    return this.#redis;
  }

  /** The policy of a secret the scheduler rotates (only those reach here). */
  #policy(secret: string): RotationPolicy {
    const policy = this.policies().get(secret);
    if (!policy) throw new FleetError('INVALID_REQUEST', `secret "${secret}" has no rotation policy`);
    return policy;
  }

  #provider(secret: string): Promise<SecretProvider> {
    return this.#providerOfKind(this.#config.secretProviders.get(secret) ?? this.#config.secrets.provider);
  }

  async #providerOfKind(kind: ProviderKind): Promise<SecretProvider> {
    let p = this.#providers.get(kind);
    if (!p) {
      p = this.#openProvider
        ? await this.#openProvider(kind)
        : await makeProvider(kind, this.#config, { redis: this.#db, logger: this.#log, vaultIdentity: 'rotator' });
      this.#providers.set(kind, p);
    }
    return p;
  }

  async #rotator(name: string): Promise<Rotator | 'kms-rewrap'> {
    let r = this.#rotators.get(name);
    if (!r) {
      const cfg = this.#policy(name).rotator;
      r =
        cfg.type === 'module'
          ? sandboxedRotator(name, cfg.path, {
              timeoutMs: 60_000,
              maxOldGenerationSizeMb: 128,
              log: this.#log,
              config: this.#config,
              egress: cfg.egress,
            })
          : cfg.type === 'redis-acl'
            ? redisAclRotator({
                role: cfg.role,
                prefix: this.#config.redis.prefix,
                adminUrlEnv: cfg.adminUrlEnv,
                tls: this.#config.redis.tls,
              })
            : await loadRotator(cfg);
      this.#rotators.set(name, r);
    }
    return r;
  }

  /**
   * Retires versions whose grace window has ended (and runs the rotator's finish step). Sweeps of
   * one service run one after another, so a caller's sweep returns only once the retirements an
   * earlier (periodic) sweep claimed are done too.
   */
  sweep(): Promise<void> {
    const run = this.#sweeps.then(() => this.#sweepOnce());
    this.#sweeps = run.catch(() => undefined);
    return run;
  }

  async #sweepOnce(): Promise<void> {
    const run = this.#run;
    if (!this.#redis || !run) return;
    for (const secret of this.policies().keys()) {
      const state = await readRotationState(this.#redis, this.#config.redis.prefix, secret);
      for (const [version, at] of Object.entries(state.retiring)) {
        if (at > this.#clock.now()) continue;
        // Claim the retirement first (HDEL answers 1 to exactly one caller): the periodic sweep,
        // an explicit one and other scheduler replicas never retire a version, or run the
        // rotator's finish step, twice. A failed retirement is put back for the next sweep.
        const key = rotationStateKey(this.#config.redis.prefix, secret);
        if ((await this.#redis.hdel(key, `retire:${version}`)) !== 1) continue;
        if (
          secret === this.#config.secrets.dataKey.name &&
          (await dataKeyRetirementWaits({
            redis: this.#redis,
            config: this.#config,
            clock: this.#clock,
            log: this.#log,
            version,
            stateKey: key,
            graceSeconds: this.#policy(secret).graceSeconds,
          }))
        )
          continue;
        await run.retire(secret, version).catch(async (err: unknown) => {
          await this.#redis?.hset(key, `retire:${version}`, String(at));
          throw err;
        });
      }
    }
  }

  /** `fleet rotate <secret>`: an immediate rotation, outside the schedule (still one at a time). */
  rotateNow(secret: string): Promise<Job> {
    return requestRotation(this.#config, this.queue, secret);
  }

  /** Health of every secret the config names (for metrics and status). */
  async health(): Promise<SecretHealth[]> {
    const { meta, problems } = await listSecrets(this.#config.secretProviders.values(), async (kind) => ({
      provider: await this.#providerOfKind(kind),
      close: false,
    }));
    // A provider that cannot list leaves its secrets without a version here; say why once.
    for (const [kind, error] of problems)
      this.#log.warn(`secret provider "${kind}" could not list its secrets; their age is unknown`, { error });
    return secretHealth(this.#config, this.#db, meta);
  }

  /** Audit retention: one trim of the stream behind a signed checkpoint (see AuditRetention). */
  trimAudit(): Promise<TrimOutcome | null> {
    return this.#retention?.trim() ?? Promise.resolve(null);
  }

  /**
   * Stops taking rotation jobs, waits for a running rotation, retire sweep and audit trim to end
   * (a retirement already claimed is finished, not lost), then closes everything. Idempotent; a
   * stop() during start() waits for it.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    await this.#starting?.catch(() => undefined);
    if (this.#life.state === 'new' || this.#life.state === 'failed') {
      this.#life.to('stopped');
      return;
    }
    this.#life.to('draining');
    await this.#release();
    this.#life.to('stopped');
  }

  /** Closes what start() opened, in the order that lets running work finish. Never throws. */
  async #release(): Promise<void> {
    this.#stopAuditKeys?.();
    if (this.#sweeper) clearInterval(this.#sweeper);
    await this.#worker
      ?.close()
      .catch((err: unknown) => this.#log.warn('closing the rotation worker failed', { error: toError(err).message }));
    // A sweep that claimed a retirement (HDEL) finishes it, or puts it back, before Redis goes.
    await this.#sweeps;
    await this.#retention?.stop();
    this.#retention = null;
    await this.#queue?.close().catch(() => undefined);
    await this.#audit
      ?.close()
      .catch((err: unknown) => this.#log.warn('closing the audit log failed', { error: toError(err).message }));
    this.#auditKeys?.discard();
    for (const p of this.#providers.values()) await p.close().catch(() => undefined);
    if (!this.#givenRedis) this.#redis?.disconnect();
    this.#redis = null;
  }
}
