import { performance } from 'node:perf_hooks';
import type { FleetConfig } from '../config/resolve.js';
import { scheduleOf } from '../config/schedule.js';
import type { Clock } from '../clock.js';
import { FleetError, toError } from '../errors.js';
import type { FleetEventBus } from '../events.js';
import type { Logger } from '../observability/logger.js';
import type { RedisClient } from '../redis/connection.js';
import { rotationStateKey } from '../redis/keys.js';
import type { AuditLog } from '../secrets/audit.js';
import type { SecretMetadata, SecretProvider } from '../secrets/provider.js';
import { providerOfKind } from '../secrets/providers.js';
import type { Rotator, RotatorContext } from './rotators.js';
import { readRotationState, type RotationStep } from './state.js';

/** A failed step of a rotation; the run records `step` as the rotation's failed step. */
export class StepError extends FleetError {
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

/** What a rotation run needs; the rotation service hands in what it opened at start(). */
export interface RotationRunOptions {
  config: FleetConfig;
  /** Where the rotation state of each secret is kept (the scheduler's connection). */
  redis: RedisClient;
  audit: AuditLog;
  events: FleetEventBus;
  log: Logger;
  /** When a rotation is due and when a version retires. */
  clock: Clock;
  /** Names this scheduler in audit records. */
  workerId: string;
  /** The backend of a secret, with the rotator's identity. */
  provider(secret: string): Promise<SecretProvider>;
  /** The rotator of a secret's policy. */
  rotator(secret: string): Promise<Rotator | 'kms-rewrap'>;
  /** Retires the versions whose grace window has ended (a policy without one retires at once). */
  sweep(): Promise<void>;
}

/** The provider a rotation writes with, and how to give it back. */
interface Scope {
  provider: SecretProvider;
  /** Revokes a rotation token; never throws (an unrevoked token expires by its TTL). */
  release(): Promise<void>;
}

/**
 * One rotation of one secret: create (a pending version) → set → test → promote, the previous
 * version kept readable for the grace window; and, once that has passed, its retirement (with the
 * rotator's finish step). Each step is audited as `rotate:<step>`; a run ends with
 * `rotation:finished` and its outcome in the secret's rotation state. When runs happen is the
 * rotation service's business.
 */
export class RotationRun {
  readonly #o: RotationRunOptions;

  constructor(options: RotationRunOptions) {
    this.#o = options;
  }

  /**
   * Rotates `secret`. A scheduled run (`force` false) rotates only a secret that is due (see
   * #isDue). `attempt` is the job's attempt, for the log.
   */
  async rotate(
    secret: string,
    { force, attempt }: { force: boolean; attempt: number },
  ): Promise<{ version: string } | { skipped: 'not-due' }> {
    const { config, events, log } = this.#o;
    const policy = config.secrets.items[secret]?.rotation;
    if (!policy) throw new FleetError('CONFIG_INVALID', `secret "${secret}" has no rotation policy`);
    const started = Date.now();
    const t0 = performance.now();
    const held: Uint8Array[] = [];
    let scope: Scope | null = null;
    let pending: { version: string } | null = null;
    // Everything from here on is inside the try: a failed due-check, rotation-token mint or
    // rotator lookup is a failed rotation (recorded, counted, visible to fleet doctor), and a
    // minted rotation token is revoked whatever fails after it.
    try {
      const base = await this.#o.provider(secret);
      if (!force && !(await this.#isDue(secret, policy.schedule, base))) return { skipped: 'not-due' };
      scope = await this.#scope(base, secret);
      const scoped = scope.provider;
      const rotator = await this.#o.rotator(secret);
      const ctx: RotatorContext = { secret, current: () => currentValue(secret, base, scoped, held) };
      const previous = (await currentMeta(base, secret))?.version ?? null;
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
      await this.#recordSuccess(secret, started, promoted.version, previous, policy.graceSeconds);
      events.emit('rotation:finished', { secret, ok: true, durationMs: performance.now() - t0 });
      log.info('secret rotated', { secret, version: promoted.version, previous });
      if (policy.graceSeconds === 0) await this.#o.sweep();
      return promoted;
    } catch (err) {
      const step = err instanceof StepError ? err.step : 'create';
      if (pending && scope) {
        const abandoned = pending.version;
        await scope.provider.retire(secret, abandoned).catch((e: unknown) =>
          log.warn('could not drop the failed pending version', {
            secret,
            version: abandoned,
            error: toError(e).message,
          }),
        );
      }
      await this.#recordFailure(secret, started, step, err);
      events.emit('rotation:finished', { secret, ok: false, step, durationMs: performance.now() - t0 });
      log.warn('secret rotation failed; the current version stays in place', {
        secret,
        step,
        error: toError(err).message,
        attempt,
      });
      throw err;
    } finally {
      for (const b of held) b.fill(0);
      await scope?.release();
    }
  }

  /**
   * Retires `version` of `secret` (its grace window has ended) and runs the rotator's finish step
   * with the current value, the one that stays. Audited as `rotate:retire`; a failure is a
   * StepError.
   */
  async retire(secret: string, version: string): Promise<void> {
    await this.#step(
      secret,
      'retire',
      async () => {
        const base = await this.#o.provider(secret);
        const rotator = await this.#o.rotator(secret);
        const scope = await this.#scope(base, secret);
        const held: Uint8Array[] = [];
        try {
          await scope.provider.retire(secret, version);
          if (rotator !== 'kms-rewrap' && rotator.finish)
            await rotator.finish({
              secret,
              retiredVersion: version,
              current: () => currentValue(secret, base, scope.provider, held),
            });
        } finally {
          for (const b of held) b.fill(0);
          await scope.release();
        }
      },
      () => version,
    );
  }

  /**
   * A scheduled tick rotates only a secret that is due (its current version is at least one
   * interval old, less 10% slack): a new scheduler's first tick, ticks bunched up after downtime
   * and several replicas all end in at most one rotation per window. `force` (fleet rotate) skips
   * the check.
   */
  async #isDue(secret: string, schedule: string, provider: SecretProvider): Promise<boolean> {
    const { intervalMs } = scheduleOf(schedule);
    if (intervalMs === null) return true;
    const state = await readRotationState(this.#o.redis, this.#o.config.redis.prefix, secret);
    const since = state.lastSuccessAt ?? (await currentMeta(provider, secret))?.updatedAt ?? 0;
    return this.#o.clock.now() - since >= intervalMs - Math.min(intervalMs * 0.1, 60_000);
  }

  /** Vault: the steps run with a token that can write this one secret only; other backends as they are. */
  async #scope(base: SecretProvider, secret: string): Promise<Scope> {
    if (base.kind !== 'vault') return { provider: base, release: () => Promise.resolve() };
    const scope = await providerOfKind(base, 'vault').scopedTo(secret);
    return {
      provider: scope.provider,
      release: () =>
        scope.release().catch((e: unknown) =>
          this.#o.log.error('could not revoke the rotation token; it expires by its TTL', {
            secret,
            error: toError(e).message,
          }),
        ),
    };
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

  #auditStep(
    secret: string,
    step: RotationStep,
    outcome: 'granted' | 'error',
    started: number,
    extra: { version?: string; reason?: string } = {},
  ): void {
    const { config } = this.#o;
    this.#o.audit.record({
      ts: Date.now(),
      outcome,
      secret,
      jobId: 'rotation',
      jobType: 'rotation',
      workerId: this.#o.workerId,
      provider: config.secretProviders.get(secret) ?? config.secrets.provider,
      latencyMs: Math.round((performance.now() - started) * 1000) / 1000,
      action: `rotate:${step}`,
      ...extra,
    });
  }

  /** The promoted version is current; the previous one retires once the grace window has passed. */
  async #recordSuccess(
    secret: string,
    started: number,
    version: string,
    previous: string | null,
    graceSeconds: number,
  ): Promise<void> {
    const key = rotationStateKey(this.#o.config.redis.prefix, secret);
    const multi = this.#o.redis
      .multi()
      .hset(
        key,
        'currentVersion',
        version,
        'lastRotationAt',
        String(started),
        'lastSuccessAt',
        String(Date.now()),
        'lastOutcome',
        'ok',
      )
      .hdel(key, 'lastFailedStep', 'lastError')
      .hincrby(key, 'rotations', 1);
    if (previous && previous !== version)
      multi.hset(key, `retire:${previous}`, String(this.#o.clock.now() + graceSeconds * 1000));
    await multi.exec();
  }

  async #recordFailure(secret: string, started: number, step: RotationStep, err: unknown): Promise<void> {
    const key = rotationStateKey(this.#o.config.redis.prefix, secret);
    await this.#o.redis
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
  }
}

/** What `provider` lists as the secret's current version, if any. */
async function currentMeta(provider: SecretProvider, secret: string): Promise<SecretMetadata | undefined> {
  return (await provider.list()).find((m) => m.name === secret);
}

/**
 * The current value of `secret` (the version `base` lists, read with `reader`, the rotation's
 * scoped provider), for a rotator step. The bytes go into `held`, which the caller zeroes.
 */
async function currentValue(
  secret: string,
  base: SecretProvider,
  reader: SecretProvider,
  held: Uint8Array[],
): Promise<Buffer> {
  const cur = await currentMeta(base, secret);
  if (!cur) throw new FleetError('SECRET_NOT_FOUND', `secret "${secret}" has no current version`);
  const v = await reader.readVersion(secret, cur.version);
  held.push(v.value);
  return Buffer.from(v.value.buffer, v.value.byteOffset, v.value.byteLength);
}
