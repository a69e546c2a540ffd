import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { Queue, Worker, type Job } from 'bullmq';
import type { RedisClient } from '../redis/connection.js';
import { encryptsData, type FleetConfig } from '../config/resolve.js';
import { scheduleOf } from '../config/schedule.js';
import type { rotationSchema } from '../config/schema.js';
import { systemClock, type Clock } from '../clock.js';
import { Lifecycle, type ServiceState } from '../lifecycle.js';
import { FleetError, toError } from '../errors.js';
import type { FleetEventBus } from '../events.js';
import { silentLogger, type Logger } from '../observability/logger.js';
import { connectRedis, waitForRedis } from '../redis/connection.js';
import { rotationQueuePrefix, rotationStateKey } from '../redis/keys.js';
import { readRotationState, type RotationStep } from './state.js';

import { openAuditLog, type AuditLog } from '../secrets/audit.js';
import type { AuditKeyRing } from '../secrets/audit-chain.js';
import { AuditRetention, type TrimOutcome } from '../secrets/audit-retention.js';
import type { ProviderKind, SecretProvider } from '../secrets/provider.js';
import { secretHealth, type SecretHealth } from './secret-health.js';
import { dataKeyRing, listSecrets, makeProvider, providerOfKind } from '../secrets/providers.js';
import { jobsSealedUnder } from './data-key-use.js';
import { loadRotator, type Rotator, type RotatorContext } from './rotators.js';
import { runRotatorStep } from './sandboxed-rotator.js';
import { redisAclRotator } from './redis-acl-rotator.js';
import type { z } from 'zod';

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
    {
      jobId: `rotate-now-${secret}-${Date.now()}`,
      attempts: policy.attempts,
      backoff: { type: 'exponential', delay: policy.backoffMs },
      removeOnComplete: { count: 200 },
      removeOnFail: { count: 200 },
    },
  );
}

class StepError extends FleetError {
  override name = 'RotationStepError';
  constructor(
    readonly step: RotationStep,
    cause: unknown,
  ) {
    const e = toError(cause);
    super(e instanceof FleetError ? e.code : 'INTERNAL', `rotation step "${step}" failed: ${e.message}`, {
      cause,
      retryable: true,
    });
  }
}

/**
 * Keeps secrets fresh with BullMQ Job Schedulers on a dedicated queue with global concurrency 1.
 * Scheduler ids are fixed (`rotate-<secret>`), so any number of replicas can start at once and
 * upsert the same schedules: no duplicate schedules, no duplicate runs; a window missed while the
 * fleet was down runs once. Each rotation creates a pending version, lets the rotator apply and
 * test it, and only then promotes it; the previous version stays readable for the grace window.
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
        {
          name: 'rotate',
          data: { secret: name },
          opts: {
            attempts: policy.attempts,
            backoff: { type: 'exponential', delay: policy.backoffMs },
            removeOnComplete: { count: 200 },
            removeOnFail: { count: 200 },
          },
        },
      );
    }
    // Schedules of secrets that lost their policy are removed.
    for (const s of await this.#queue.getJobSchedulers()) {
      const name = s.key.startsWith('rotate-') ? s.key.slice('rotate-'.length) : null;
      if (name && !policies.has(name)) await this.#queue.removeJobScheduler(s.key);
    }

    this.#worker = new Worker(
      ROTATION_QUEUE,
      (job: Job<{ secret: string; force?: boolean }>) => this.#rotate(job.data.secret, job, job.data.force === true),
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
    if (encryptsData(this.#config)) await this.#ensureDataKey();
    this.#log.info('rotation scheduler running', { secrets: [...policies.keys()] });
  }

  /**
   * Creates the data key of job data at rest when its store has none (the scheduler's identity may
   * write KMS envelopes, which supervisors and the API may only read). Not fatal: producers and
   * supervisors say what is missing when they need it.
   */
  async #ensureDataKey(): Promise<void> {
    const name = this.#config.secrets.dataKey.name;
    const ring = dataKeyRing(this.#config, await this.#provider(name));
    try {
      const key = await ring.current();
      this.#log.info('data key for job data at rest is ready', { secret: name, version: key.version });
    } catch (err) {
      this.#log.warn('the data key for job data at rest is not ready', { secret: name, error: toError(err).message });
    } finally {
      ring.discard();
    }
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
          ? this.#sandboxed(name, cfg.path)
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
   * A module rotator whose every step runs in a fresh process sandbox (the job processors' own
   * primitive: empty environment, permission model, namespaces, egress policy, capped heap, hard
   * timeout), given only this secret's current value (and the new one), as bytes.
   */
  #sandboxed(secret: string, rotatorPath: string): Rotator {
    const policy = this.#policy(secret).rotator;
    const opts = {
      timeoutMs: 60_000,
      maxOldGenerationSizeMb: 128,
      log: this.#log,
      config: this.#config,
      egress: policy.type === 'module' ? policy.egress : ('none' as const),
    };
    const current = async (ctx: RotatorContext): Promise<{ current?: Uint8Array }> => {
      const cur = await ctx.current().catch(() => null);
      return cur ? { current: new Uint8Array(cur) } : {};
    };
    return {
      create: async (ctx) => {
        const v = await runRotatorStep(rotatorPath, { step: 'create', secret, ...(await current(ctx)) }, opts);
        if (!v) throw new FleetError('INTERNAL', `rotator ${rotatorPath} returned no value from create`);
        return v;
      },
      set: async (ctx, value) =>
        void (await runRotatorStep(
          rotatorPath,
          { step: 'set', secret, value: new Uint8Array(value), ...(await current(ctx)) },
          opts,
        )),
      test: async (ctx, value) =>
        void (await runRotatorStep(
          rotatorPath,
          { step: 'test', secret, value: new Uint8Array(value), ...(await current(ctx)) },
          opts,
        )),
      finish: async (ctx) =>
        void (await runRotatorStep(rotatorPath, { step: 'finish', secret, retiredVersion: ctx.retiredVersion }, opts)),
    };
  }

  #auditStep(
    secret: string,
    step: RotationStep,
    outcome: 'granted' | 'error',
    started: number,
    extra: { version?: string; reason?: string } = {},
  ): void {
    this.#audit?.record({
      ts: Date.now(),
      outcome,
      secret,
      jobId: 'rotation',
      jobType: 'rotation',
      workerId: this.#id,
      provider: this.#config.secretProviders.get(secret) ?? this.#config.secrets.provider,
      latencyMs: Math.round((performance.now() - started) * 1000) / 1000,
      action: `rotate:${step}`,
      ...extra,
    });
  }

  async #step<T>(
    secret: string,
    step: RotationStep,
    fn: () => Promise<T>,
    version?: (r: T) => string | undefined,
  ): Promise<T> {
    const t = performance.now();
    try {
      const r = await fn();
      const v = version?.(r);
      this.#auditStep(secret, step, 'granted', t, v ? { version: v } : {});
      return r;
    } catch (err) {
      this.#auditStep(secret, step, 'error', t, {
        reason: err instanceof FleetError ? err.code : toError(err).message.slice(0, 200),
      });
      throw new StepError(step, err);
    }
  }

  /**
   * A scheduled tick rotates only a secret that is due (its current version is at least one
   * interval old, less 10% slack): a new scheduler's first tick, ticks bunched up after downtime
   * and several replicas all end in at most one rotation per window. `force` (fleet rotate) skips
   * the check.
   */
  async #isDue(secret: string, policy: RotationPolicy, provider: SecretProvider): Promise<boolean> {
    const { intervalMs } = scheduleOf(policy.schedule);
    if (intervalMs === null) return true;
    const state = await readRotationState(this.#db, this.#config.redis.prefix, secret);
    const since = state.lastSuccessAt ?? (await provider.list()).find((m) => m.name === secret)?.updatedAt ?? 0;
    return this.#clock.now() - since >= intervalMs - Math.min(intervalMs * 0.1, 60_000);
  }

  /** One rotation: create (pending) → set → test → promote; the old version retires after the grace window. */
  async #rotate(secret: string, job?: Job, force = true): Promise<{ version: string } | { skipped: 'not-due' }> {
    const policy = this.policies().get(secret);
    if (!policy) throw new FleetError('CONFIG_INVALID', `secret "${secret}" has no rotation policy`);
    const key = rotationStateKey(this.#config.redis.prefix, secret);
    const started = Date.now();
    const t0 = performance.now();
    const held: Uint8Array[] = [];
    let scope: Awaited<ReturnType<import('../secrets/vault-provider.js').VaultProvider['scopedTo']>> | null = null;
    let pending: { version: string } | null = null;
    let provider: SecretProvider | null = null;
    // Everything from here on is inside the try: a failed due-check, rotation-token mint or
    // rotator lookup is a failed rotation (recorded, counted, visible to fleet doctor), and a
    // minted rotation token is revoked whatever fails after it.
    try {
      const base = await this.#provider(secret);
      if (!force && !(await this.#isDue(secret, policy, base))) return { skipped: 'not-due' };
      // Vault: the steps run with a token that can write this one secret only.
      scope = base.kind === 'vault' ? await providerOfKind(base, 'vault').scopedTo(secret) : null;
      const scoped: SecretProvider = scope?.provider ?? base;
      provider = scoped;
      const rotator = await this.#rotator(secret);
      const ctx: RotatorContext = {
        secret,
        current: async () => {
          const cur = (await base.list()).find((m) => m.name === secret);
          if (!cur)
            throw new FleetError('SECRET_NOT_FOUND', `secret "${secret}" has no current version to rotate from`);
          const v = await scoped.readVersion(secret, cur.version);
          held.push(v.value);
          return Buffer.from(v.value.buffer, v.value.byteOffset, v.value.byteLength);
        },
      };
      const previous = (await base.list()).find((m) => m.name === secret)?.version ?? null;
      let value: Uint8Array | null = null;
      if (rotator === 'kms-rewrap') {
        pending = await this.#step(
          secret,
          'create',
          () => providerOfKind(scoped, 'kms').rewrapPending(secret),
          (r) => r.version,
        );
      } else {
        const created = await this.#step(
          secret,
          'create',
          async () => {
            const v = await rotator.create(ctx);
            held.push(v);
            return { value: v, ...(await scoped.writePending(secret, v)) };
          },
          (r) => r.version,
        );
        value = created.value;
        pending = { version: created.version };
        const v = value;
        if (rotator.set) await this.#step(secret, 'set', async () => rotator.set?.(ctx, v));
      }
      const p = pending;
      await this.#step(secret, 'test', async () => {
        // The stored pending version must decrypt/read back to what was created (for rewraps: to the current value).
        const back = await scoped.readVersion(secret, p.version);
        held.push(back.value);
        const expected = value ?? (previous ? (await scoped.readVersion(secret, previous)).value : null);
        if (expected) held.push(expected);
        if (!expected || Buffer.compare(Buffer.from(back.value), Buffer.from(expected)) !== 0)
          throw new Error('pending version does not read back as created');
        if (rotator !== 'kms-rewrap' && rotator.test) await rotator.test(ctx, back.value);
      });
      const promoted = await this.#step(
        secret,
        'promote',
        () => scoped.promote(secret, p.version),
        (r) => r.version,
      );
      pending = null;
      const multi = this.#db
        .multi()
        .hset(
          key,
          'currentVersion',
          promoted.version,
          'lastRotationAt',
          String(started),
          'lastSuccessAt',
          String(Date.now()),
          'lastOutcome',
          'ok',
        )
        .hdel(key, 'lastFailedStep', 'lastError')
        .hincrby(key, 'rotations', 1);
      if (previous && previous !== promoted.version)
        multi.hset(key, `retire:${previous}`, String(this.#clock.now() + policy.graceSeconds * 1000));
      await multi.exec();
      this.#events.emit('rotation:finished', { secret, ok: true, durationMs: performance.now() - t0 });
      this.#log.info('secret rotated', { secret, version: promoted.version, previous });
      if (policy.graceSeconds === 0) await this.sweep();
      return promoted;
    } catch (err) {
      const step = err instanceof StepError ? err.step : 'create';
      if (pending && provider) {
        const abandoned = pending.version;
        await provider.retire(secret, abandoned).catch((e: unknown) =>
          this.#log.warn('could not drop the failed pending version', {
            secret,
            version: abandoned,
            error: toError(e).message,
          }),
        );
      }
      await this.#db
        .multi()
        .hset(
          key,
          'lastRotationAt',
          String(started),
          'lastOutcome',
          'failed',
          'lastFailedStep',
          step,
          'lastError',
          toError(err).message.slice(0, 500),
        )
        .hincrby(key, 'failures', 1)
        .exec();
      this.#events.emit('rotation:finished', { secret, ok: false, step, durationMs: performance.now() - t0 });
      this.#log.warn('secret rotation failed; the current version stays in place', {
        secret,
        step,
        error: toError(err).message,
        attempt: job ? job.attemptsMade + 1 : 1,
      });
      throw err;
    } finally {
      for (const b of held) b.fill(0);
      await scope?.release().catch((e: unknown) =>
        this.#log.error('could not revoke the rotation token; it expires by its TTL', {
          secret,
          error: toError(e).message,
        }),
      );
    }
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
    if (!this.#redis) return;
    for (const secret of this.policies().keys()) {
      const state = await readRotationState(this.#redis, this.#config.redis.prefix, secret);
      for (const [version, at] of Object.entries(state.retiring)) {
        if (at > this.#clock.now()) continue;
        // Claim the retirement first (HDEL answers 1 to exactly one caller): the periodic sweep,
        // an explicit one and other scheduler replicas never retire a version, or run the
        // rotator's finish step, twice. A failed retirement is put back for the next sweep.
        const key = rotationStateKey(this.#config.redis.prefix, secret);
        if ((await this.#redis.hdel(key, `retire:${version}`)) !== 1) continue;
        if (secret === this.#config.secrets.dataKey.name && (await this.#dataKeyStillUsed(secret, version, key)))
          continue;
        await this.#step(
          secret,
          'retire',
          async () => {
            const base = await this.#provider(secret);
            const rotator = await this.#rotator(secret);
            const scope = base.kind === 'vault' ? await providerOfKind(base, 'vault').scopedTo(secret) : null;
            try {
              await (scope?.provider ?? base).retire(secret, version);
              if (rotator !== 'kms-rewrap' && rotator.finish) {
                // finish gets the current value (the one that stays), read like the rotation reads it.
                const reader = scope?.provider ?? base;
                const current = async (): Promise<Buffer> => {
                  const cur = (await base.list()).find((m) => m.name === secret);
                  if (!cur) throw new FleetError('SECRET_NOT_FOUND', `secret "${secret}" has no current version`);
                  const v = await reader.readVersion(secret, cur.version);
                  return Buffer.from(v.value.buffer, v.value.byteOffset, v.value.byteLength);
                };
                await rotator.finish({ secret, retiredVersion: version, current });
              }
            } finally {
              await scope?.release().catch((e: unknown) =>
                this.#log.error('could not revoke the rotation token; it expires by its TTL', {
                  secret,
                  error: toError(e).message,
                }),
              );
            }
          },
          () => version,
        ).catch(async (err: unknown) => {
          await this.#redis?.hset(key, `retire:${version}`, String(at));
          throw err;
        });
      }
    }
  }

  /**
   * A data key version retires only once no stored job is sealed under it: while some are, its
   * retirement moves on by another grace window (a job waiting longer than one loses nothing).
   */
  async #dataKeyStillUsed(secret: string, version: string, stateKey: string): Promise<boolean> {
    const users = await jobsSealedUnder(this.#db, this.#config, version).catch(async (err: unknown) => {
      await this.#redis?.hset(stateKey, `retire:${version}`, String(this.#clock.now() + 60_000));
      throw err;
    });
    if (!users.length) return false;
    const graceMs = Math.max(1000, this.#policy(secret).graceSeconds * 1000);
    await this.#db.hset(stateKey, `retire:${version}`, String(this.#clock.now() + graceMs));
    this.#log.info('data key version still seals stored jobs; its retirement waits', {
      secret,
      version,
      jobs: users,
      retryInMs: graceMs,
    });
    return true;
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
