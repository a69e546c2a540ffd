import { performance } from 'node:perf_hooks';
import type { FleetConfig, JobType } from '../config/resolve.js';
import { FleetError, SecretScopeError, SecretUnavailableError, toError } from '../errors.js';
import type { FleetEventBus } from '../events.js';
import type { Logger } from '../observability/logger.js';
import type { AuditLog } from './audit.js';
import type { InjectionRegistry } from './injection.js';
import type { LeaseLedger, ProviderKind, SecretLease, SecretProvider, SecretValue } from './provider.js';

/** The audit and metrics bucket of requests for names no config declares. */
export const UNDECLARED_SECRET = '(undeclared)';

/**
 * Hands secrets to one job: checks scope, fetches through a lease minted for this job (per
 * provider, on first use), audits every attempt and counts it. `release()` revokes the leases;
 * it runs at job end whatever happened, so a crashed or timed-out job leaves no live credential.
 */
export class JobSecrets {
  readonly #broker: SecretBroker;
  readonly #type: JobType;
  readonly #jobId: string;
  readonly #leases = new Map<ProviderKind, Promise<SecretLease>>();
  /** Values handed to the sandbox in this job (for the values-alive gauge). */
  handed = 0;
  /** Names whose value the backend minted for this job (counted in the dynamic-leases gauge). */
  readonly #minted = new Set<string>();
  /** Where this job's injected values are kept, once there are any. */
  #injections: InjectionRegistry | null = null;

  constructor(broker: SecretBroker, type: JobType, jobId: string) {
    this.#broker = broker;
    this.#type = type;
    this.#jobId = jobId;
  }

  /**
   * A sandbox asked for a secret by name (IPC). Never the value of one its type takes as
   * `inject`: that value does not enter a sandbox, whatever the sandbox sends.
   */
  async request(name: string): Promise<SecretValue> {
    if (this.#type.secretModes.get(name) === 'inject') {
      const b = this.#broker;
      const err = new SecretScopeError(
        `secret "${name}" is injected at egress for job type "${this.#type.name}": its value is never handed to a sandbox. Fix: use ctx.secrets.placeholder("${name}").`,
      );
      b.audit({
        secret: name,
        jobId: this.#jobId,
        jobType: this.#type.name,
        workerId: b.workerId,
        action: 'access',
        provider: b.config.secretProviders.get(name) ?? b.config.secrets.provider,
        outcome: 'denied',
        reason: 'SECRET_INJECT_ONLY',
        latencyMs: 0,
      });
      throw err;
    }
    return this.get(name);
  }

  /** A fresh copy of the value for the sandbox; the caller transfers it and keeps nothing. */
  async get(name: string): Promise<SecretValue> {
    const b = this.#broker;
    const started = performance.now();
    const base = { secret: name, jobId: this.#jobId, jobType: this.#type.name, workerId: b.workerId, action: 'access' };
    const provider = b.config.secretProviders.get(name) ?? b.config.secrets.provider;
    if (!this.#type.secrets.includes(name)) {
      const known = b.config.secretProviders.has(name) || name in b.config.secrets.items;
      const shown = known ? name : JSON.stringify(name.slice(0, 64));
      const err = new SecretScopeError(
        `job type "${this.#type.name}" may not read secret ${known ? `"${name}"` : shown}; it declares: ${this.#type.secrets.join(', ') || '(none)'}. Fix: add it to jobTypes.${this.#type.name}.secrets if this is intended.`,
      );
      // A name no config knows is chosen by the sandbox: it is audited and counted in one bucket,
      // never as a key or a metric label of its own (20k names would be 20k keys and series).
      b.audit({
        ...base,
        secret: known ? name : UNDECLARED_SECRET,
        provider: known ? provider : '-',
        outcome: 'denied',
        reason: known ? err.code : `${err.code}: ${shown}`,
        latencyMs: performance.now() - started,
      });
      throw err;
    }
    try {
      const lease = await this.#lease(provider);
      const v = await lease.read(name);
      // Counted the moment a value exists here; release() counts them all back down.
      this.handed += 1;
      b.valuesAlive(1);
      if (v.leaseId && !this.#minted.has(name)) {
        this.#minted.add(name);
        b.dynamicLeases(1);
      }
      b.audit({ ...base, provider, outcome: 'granted', version: v.version, latencyMs: performance.now() - started });
      return v;
    } catch (caught) {
      const err =
        caught instanceof FleetError
          ? caught
          : new SecretUnavailableError(
              'SECRET_PROVIDER_UNAVAILABLE',
              `reading secret "${name}" failed: ${toError(caught).message}`,
              { retryable: true, cause: caught },
            );
      b.audit({
        ...base,
        provider,
        outcome: err.code === 'SECRET_PERMISSION_DENIED' ? 'denied' : 'error',
        reason: err.code,
        latencyMs: performance.now() - started,
      });
      throw err;
    }
  }

  #lease(kind: ProviderKind): Promise<SecretLease> {
    let l = this.#leases.get(kind);
    if (!l) {
      l = this.#broker.provider(kind).lease({
        jobId: this.#jobId,
        jobType: this.#type.name,
        names: this.#type.secrets.filter((n) => this.#broker.config.secretProviders.get(n) === kind),
        ttlMs: this.#type.timeoutMs,
        ...(this.#broker.ledger ? { ledger: this.#broker.ledger } : {}),
      });
      // A failed mint is not kept: the next read tries again.
      l.catch(() => this.#leases.delete(kind));
      this.#leases.set(kind, l);
    }
    return l;
  }

  /**
   * Every secret the type declares, fetched in parallel for the hand-off at job start. If any
   * fails, the values already fetched are zero-filled before the first error is thrown: nothing
   * fetched for a job that cannot start stays in memory.
   */
  async fetchDeclared(): Promise<(SecretValue & { name: string })[]> {
    const settled = await Promise.allSettled(
      this.#type.secrets.map(async (name) => ({ name, ...(await this.get(name)) })),
    );
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const values = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    if (failed) {
      for (const v of values) v.value.fill(0);
      throw failed.reason;
    }
    return values;
  }

  /**
   * The hand-off at job start: every declared secret fetched; `deliver` values returned for the
   * sandbox (the caller transfers them and keeps nothing), `inject` values kept in `injections`
   * behind a per-job placeholder each (the sandbox gets only the placeholder).
   */
  async fetchForSandbox(
    injections: InjectionRegistry | null,
  ): Promise<{ deliver: (SecretValue & { name: string })[]; placeholders: { name: string; placeholder: string }[] }> {
    const values = await this.fetchDeclared();
    const deliver: (SecretValue & { name: string })[] = [];
    const placeholders: { name: string; placeholder: string }[] = [];
    for (const s of values) {
      const binding = this.#broker.config.secrets.items[s.name]?.binding;
      if (this.#type.secretModes.get(s.name) === 'inject' && binding && injections) {
        this.#injections = injections;
        placeholders.push({
          name: s.name,
          placeholder: injections.issue(this.#jobId, this.#type.name, s.name, s.value, binding),
        });
      } else deliver.push(s);
    }
    return { deliver, placeholders };
  }

  /**
   * Job end: injected values zero-filled and their placeholders retired (a later use is a replay),
   * the job's leases revoked, and its values counted as gone (the sandbox zeroed them or was destroyed).
   */
  async release(): Promise<void> {
    this.#injections?.endJob(this.#jobId);
    this.#injections = null;
    if (this.handed) this.#broker.valuesAlive(-this.handed);
    this.handed = 0;
    const leases = [...this.#leases];
    this.#leases.clear();
    const b = this.#broker;
    await Promise.all(
      leases.map(async ([provider, p]) => {
        try {
          for (const end of (await (await p).release()) ?? []) {
            // The backend destroyed the credential (or was asked to and failed): audited with its
            // lease id, never the credential.
            b.auditEvent({
              secret: end.name,
              jobId: this.#jobId,
              jobType: this.#type.name,
              workerId: b.workerId,
              action: 'revoke',
              provider,
              version: end.leaseId,
              outcome: end.error ? 'error' : 'granted',
              ...(end.error ? { reason: `SECRET_REVOKE_FAILED: ${end.error.slice(0, 300)}` } : {}),
              latencyMs: 0,
            });
            if (end.error) {
              // The backend could not destroy the credential (a database user that cannot be
              // dropped): it may outlive the job. An alert, not a footnote.
              b.log.error('a dynamic credential was NOT destroyed at job end; check the backend', {
                jobId: this.#jobId,
                secret: end.name,
                leaseId: end.leaseId,
                error: end.error,
              });
              b.dynamicRevokeFailed(this.#type.name, end.name);
            }
          }
        } catch (err) {
          b.log.warn('releasing a secret lease failed', { jobId: this.#jobId, error: toError(err).message });
        }
      }),
    );
    if (this.#minted.size) b.dynamicLeases(-this.#minted.size);
    this.#minted.clear();
  }
}

export class SecretBroker {
  readonly config: FleetConfig;
  readonly workerId: string;
  readonly log: Logger;
  readonly ledger: LeaseLedger | null;
  readonly #providers: ReadonlyMap<ProviderKind, SecretProvider>;
  readonly #audit: AuditLog;
  readonly #events: FleetEventBus;
  readonly #closeProviders: boolean;

  constructor(options: {
    config: FleetConfig;
    providers: ReadonlyMap<ProviderKind, SecretProvider>;
    /** Whether close() closes the providers too (false when the caller owns them). @defaultValue true */
    closeProviders?: boolean;
    audit: AuditLog;
    events: FleetEventBus;
    workerId: string;
    logger: Logger;
    /** Where job tokens that mint backend credentials are noted (see lease-ledger.ts). */
    ledger?: LeaseLedger;
  }) {
    this.config = options.config;
    this.#providers = options.providers;
    this.#closeProviders = options.closeProviders ?? true;
    this.#audit = options.audit;
    this.#events = options.events;
    this.workerId = options.workerId;
    this.log = options.logger;
    this.ledger = options.ledger ?? null;
  }

  provider(kind: ProviderKind): SecretProvider {
    const p = this.#providers.get(kind);
    if (!p)
      throw new SecretUnavailableError(
        'SECRET_PROVIDER_UNAVAILABLE',
        `secret provider "${kind}" is not configured on this supervisor. Fix: add secrets.${kind} to the config.`,
      );
    return p;
  }

  get providers(): ReadonlyMap<ProviderKind, SecretProvider> {
    return this.#providers;
  }

  forJob(type: JobType, jobId: string): JobSecrets {
    return new JobSecrets(this, type, jobId);
  }

  audit(rec: Omit<Parameters<AuditLog['record']>[0], 'ts'>): void {
    const full = { ts: Date.now(), ...rec, latencyMs: Math.round(rec.latencyMs * 1000) / 1000 };
    this.#audit.record(full);
    this.#events.emit('secret:accessed', {
      secret: rec.secret,
      jobType: rec.jobType,
      outcome: rec.outcome,
      provider: rec.provider,
      latencyMs: full.latencyMs,
    });
  }

  /** The `fleet_secret_values_alive` gauge: +n when values are fetched for a job, -n when it ends. */
  valuesAlive(delta: number): void {
    this.#events.emit('secret:values', { delta });
  }

  /** The `fleet_dynamic_leases_alive` gauge: credentials minted for running jobs. */
  dynamicLeases(delta: number): void {
    this.#events.emit('secret:dynamic', { delta });
  }

  /** A backend-minted credential whose revocation failed at job end (`fleet_dynamic_revoke_failures_total`). */
  dynamicRevokeFailed(jobType: string, secret: string): void {
    this.#events.emit('secret:revoke-failed', { jobType, secret });
  }

  /** An audit record that is not a secret read (an egress refusal): written, not counted as an access. */
  auditEvent(rec: Omit<Parameters<AuditLog['record']>[0], 'ts'>): void {
    this.#audit.record({ ts: Date.now(), ...rec });
  }

  get auditLog(): AuditLog {
    return this.#audit;
  }

  async close(): Promise<void> {
    await this.#audit.close();
    if (this.#closeProviders) await Promise.all([...this.#providers.values()].map((p) => p.close()));
  }
}
