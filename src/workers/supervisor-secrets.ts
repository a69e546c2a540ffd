/**
 * A supervisor's side of secrets: the providers and the broker that reads through them, the audit
 * log with its MAC key ring and the periodic check of the chain's tail, the data key of the types
 * that seal their data at rest, and the ledger of job tokens that mint dynamic credentials, swept
 * for what supervisors that died left behind.
 */
import type { FleetEventBus } from '../events.js';
import { auditKeyProvider, dataKeyProvider, type FleetConfig, type JobType } from '../config/resolve.js';
import { ConfigError, toError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { duplicateClient, type RedisClient } from '../redis/connection.js';
import { AuditLog, openAuditLog, readHeads, verifyAuditTrail } from '../secrets/audit.js';
import type { AuditKeyRing, VerifyReport } from '../secrets/audit-chain.js';
import { SecretBroker } from '../secrets/broker.js';
import type { DataKeyRing } from '../secrets/data-key.js';
import { RedisLeaseLedger, sweepOrphanedTokens } from '../secrets/lease-ledger.js';
import type { ProviderKind, SecretProvider } from '../secrets/provider.js';
import { dataKeyRing, dynamicSecrets, makeProviders, providerOfKind } from '../secrets/providers.js';
import { readSupervisorStatuses } from './supervisor-status.js';

export interface SupervisorSecretsOptions {
  config: FleetConfig;
  redis: RedisClient;
  types: readonly JobType[];
  supervisorId: string;
  log: Logger;
  events: FleetEventBus;
  /** Providers the caller owns and closes; null: opened here from the config, closed by close(). */
  providers: ReadonlyMap<ProviderKind, SecretProvider> | null;
  /** false: audit records without the MAC chain (the bench's baseline only). */
  sealAudit: boolean;
}

/** Where a refusal the audit trail keeps came from: a job type and, when it had one, its job. */
export interface Refused {
  jobType: string;
  jobId: string | null;
}

export class SupervisorSecrets {
  readonly broker: SecretBroker;
  /** The data key, when one of the supervisor's types seals its data at rest. */
  readonly dataKeys: DataKeyRing | null;
  readonly #o: SupervisorSecretsOptions;
  readonly #ledger: { ledger: RedisLeaseLedger; vault: SecretProvider } | null;
  readonly #stopAuditKeys: (() => void) | null;
  readonly #auditCheck: NodeJS.Timeout;
  /** The audit writer's own connection (see the constructor). */
  readonly #auditRedis: RedisClient;
  #auditKeys: AuditKeyRing | null = null;

  /**
   * Opens the providers (unless given), the audit log and the broker. A provider that is not
   * reachable does not stop start-up (its jobs fail retryably until it is back): it is logged.
   */
  static async open(options: SupervisorSecretsOptions): Promise<SupervisorSecrets> {
    const providers =
      options.providers ?? (await makeProviders(options.config, { redis: options.redis, logger: options.log }));
    let secrets: SupervisorSecrets;
    try {
      secrets = new SupervisorSecrets(options, providers);
    } catch (err) {
      // A config the providers cannot serve (no store for the audit or data key): what was opened here is closed.
      if (!options.providers) await Promise.allSettled([...providers.values()].map((p) => p.close()));
      throw err;
    }
    void secrets.sweepLedger();
    await Promise.all(
      [...providers.values()].map((p) =>
        p.check().catch((err: unknown) =>
          options.log.warn(`secret provider "${p.kind}" is not ready; jobs that need it will fail and retry`, {
            error: toError(err).message,
          }),
        ),
      ),
    );
    return secrets;
  }

  private constructor(o: SupervisorSecretsOptions, providers: ReadonlyMap<ProviderKind, SecretProvider>) {
    this.#o = o;
    const { config, redis, log } = o;
    const prefix = config.redis.prefix;
    const auditKeys = providers.get(auditKeyProvider(config));
    if (!auditKeys)
      throw new ConfigError(
        `no "${auditKeyProvider(config)}" secret provider for the audit MAC key (secrets.audit.macKey). Fix: pass every provider usedProviders(config) names.`,
      );
    let dataKeys: DataKeyRing | null = null;
    if (o.types.some((t) => t.encryptData)) {
      const kind = dataKeyProvider(config);
      const store = providers.get(kind);
      if (!store)
        throw new ConfigError(
          `no "${kind}" secret provider for the data key (secrets.dataKey). Fix: pass every provider usedProviders(config) names.`,
        );
      // Read on first use (a job's payload), like a job's secrets: a store that is down does not stop start-up.
      dataKeys = dataKeyRing(config, store);
    }
    this.dataKeys = dataKeys;
    const auditCfg = config.secrets.audit;
    // The audit writer gets a connection of its own: on the one BullMQ shares, ioredis copies
    // BullMQ's scripts (64) onto every MULTI it builds, ~0.1 ms of CPU per batch of records.
    const auditRedis = duplicateClient(redis);
    auditRedis.on('error', (err) => log.warn('audit connection error; reconnecting', { error: err.message }));
    this.#auditRedis = auditRedis;
    let audit: AuditLog;
    if (o.sealAudit) {
      const opened = openAuditLog({
        redis: auditRedis,
        prefix,
        logger: log,
        provider: auditKeys,
        audit: auditCfg,
        writer: o.supervisorId,
      });
      audit = opened.log;
      this.#stopAuditKeys = opened.stop;
      void opened.keys.then(
        (k) => (this.#auditKeys = k),
        () => undefined,
      );
    } else {
      audit = new AuditLog({ redis: auditRedis, prefix, logger: log, chain: null });
      this.#stopAuditKeys = null;
    }
    this.#auditCheck = setInterval(() => void this.checkAuditTail(), auditCfg.verifyEveryMs);
    this.#auditCheck.unref();
    // Job tokens that mint dynamic credentials are noted in Redis first, so that should this
    // supervisor die mid-job, another one revokes them (and the credentials) without waiting for their TTL.
    const vault = providers.get('vault');
    this.#ledger =
      vault && dynamicSecrets(config).size
        ? { ledger: new RedisLeaseLedger(redis, prefix, o.supervisorId), vault }
        : null;
    this.broker = new SecretBroker({
      config,
      providers,
      closeProviders: !o.providers,
      audit,
      events: o.events,
      workerId: o.supervisorId,
      logger: log,
      ...(this.#ledger ? { ledger: this.#ledger.ledger } : {}),
    });
  }

  get providers(): ReadonlyMap<ProviderKind, SecretProvider> {
    return this.broker.providers;
  }

  /** Whether audit records are being written (the MAC key is loaded). */
  get auditReady(): boolean {
    return this.#auditKeys !== null;
  }

  /** A refusal the audit trail keeps (no secret involved), logged with what it names. */
  denied(
    what: string,
    action: string,
    provider: string,
    e: Refused,
    reason: string,
    fields: Record<string, unknown>,
  ): void {
    this.#o.log.warn(what, { jobType: e.jobType, jobId: e.jobId, ...fields });
    this.broker.auditEvent({
      action,
      outcome: 'denied',
      secret: '-',
      jobId: e.jobId ?? '-',
      jobType: e.jobType,
      workerId: this.#o.supervisorId,
      provider,
      latencyMs: 0,
      reason,
    });
  }

  /**
   * Verifies the newest records of the audit chain (MACs, links, every writer's head) and this
   * supervisor's own head: a head in Redis behind what this writer wrote means its tail was cut.
   */
  async checkAuditTail(): Promise<VerifyReport | null> {
    const { redis, config, log, events, supervisorId } = this.#o;
    const keys = this.#auditKeys;
    const audit = this.broker.auditLog;
    if (!keys) return null;
    try {
      await audit.flush();
      const mine = audit.pending === 0 ? audit.head : null;
      const report = await verifyAuditTrail(redis, config.redis.prefix, keys, {
        tail: config.secrets.audit.verifyTail,
      });
      if (mine && mine.seq > 0) {
        const stored = (await readHeads(redis, config.redis.prefix)).get(supervisorId);
        if (!stored || stored.seq !== mine.seq || stored.mac !== mine.mac) {
          const brk = {
            at: 'head',
            writer: supervisorId,
            reason: `this supervisor wrote ${mine.seq} records but its head in Redis says ${stored?.seq ?? 'nothing'}: its records were removed and the head rewritten`,
          };
          report.ok = false;
          report.breaks++;
          report.firstBreak ??= brk;
        }
      }
      if (!report.ok)
        log.error('audit trail MAC chain is broken', { firstBreak: report.firstBreak, breaks: report.breaks });
      events.emit('audit:verified', {
        by: 'tail',
        ok: report.ok,
        records: report.records,
        firstBreak: report.firstBreak,
      });
      return report;
    } catch (err) {
      log.warn('audit tail check could not run', { error: toError(err).message });
      return null;
    }
  }

  /** Revokes the job tokens (and dynamic credentials) supervisors that died mid-job left in the ledger. */
  async sweepLedger(): Promise<void> {
    const l = this.#ledger;
    if (!l) return;
    const { redis, config, log, events, supervisorId } = this.#o;
    const vault = providerOfKind(l.vault, 'vault');
    try {
      const out = await sweepOrphanedTokens({
        ledger: l.ledger,
        liveSupervisors: async () => {
          const { live } = await readSupervisorStatuses(redis, config.redis.prefix, config.supervisor.heartbeatMs);
          return new Set([supervisorId, ...live.map((s) => s.id)]);
        },
        inspect: (accessor) => vault.inspectAccessor(accessor),
        revoke: (accessor) => vault.revokeAccessor(accessor),
        audit: (entry, error) =>
          this.broker.auditEvent({
            secret: '-',
            jobId: entry.jobId,
            jobType: entry.jobType,
            workerId: supervisorId,
            action: 'revoke-orphaned',
            provider: 'vault',
            outcome: error ? 'error' : 'granted',
            reason: `job token of supervisor ${entry.owner} (gone)${error ? `: ${error.slice(0, 300)}` : ''}`,
            latencyMs: 0,
          }),
      });
      if (out.revoked.length) {
        events.emit('secret:orphans-revoked', { count: out.revoked.length });
        log.info('revoked job tokens (and their dynamic credentials) left by supervisors that died', {
          tokens: out.revoked.length,
          supervisors: [...new Set(out.revoked.map((e) => e.owner))],
        });
      }
    } catch (err) {
      log.warn('sweeping the dynamic-lease ledger failed; it runs again with the next heartbeat', {
        error: toError(err).message,
      });
    }
  }

  /** Stops the tail check, closes the broker (and the providers it opened), discards the keys. */
  async close(): Promise<void> {
    clearInterval(this.#auditCheck);
    this.#stopAuditKeys?.();
    await this.broker
      .close()
      .catch((err: unknown) => this.#o.log.error('closing secret providers failed', { error: toError(err).message }));
    this.#auditRedis.disconnect();
    this.#auditKeys?.discard();
    this.#auditKeys = null;
    this.dataKeys?.discard();
  }
}
