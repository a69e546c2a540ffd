import type { ConnectionOptions } from 'node:tls';
import type nodeVault from 'node-vault';
import { z } from 'zod';
import { utf8Bytes } from '../bytes.js';
import { systemClock, type Clock } from '../clock.js';
import { SecretUnavailableError, toError } from '../errors.js';
import { nodeVaultClient, statusOf, vaultAnswers, vaultError, VaultHttp } from './vault-http.js';
import { required } from '../guards.js';
import { warnOnFailure, type Logger } from '../observability/logger.js';
import { JobCredentials, type DynamicSecret } from './vault-dynamic.js';
import type { TokenInfo } from './lease-ledger.js';
import type { LeaseRequest, SecretLease, SecretMetadata, SecretProvider, SecretValue } from './provider.js';

/** Rotation tokens are minted through this role, each with the policy of exactly one secret. */
export const ROTATE_TOKEN_ROLE = 'fleet-rotate';
export const ROTATE_POLICY_PREFIX = 'fleet-rotate-';

export type VaultAuth =
  { method: 'token'; token: string } | { method: 'approle'; roleId: string; secretId: string; mount: string };

export interface VaultProviderOptions {
  address: string;
  /** KV v2 mount. @defaultValue `"secret"` */
  mount: string;
  /** Folder under the mount holding the fleet's secrets. @defaultValue `"fleet"` */
  prefix: string;
  auth: VaultAuth;
  /** Token role the supervisor mints job tokens through. @defaultValue `"fleet-job"` */
  tokenRole: string;
  /** Job tokens carry the policy `<policyPrefix><jobType>`. @defaultValue `"fleet-job-"` */
  policyPrefix: string;
  /** Job tokens live this much longer than the job's timeout. @defaultValue 30000 */
  tokenTtlMarginMs: number;
  /** Reads allowed per declared secret on one job token (`num_uses`). @defaultValue 4 */
  readsPerSecret: number;
  /** Job tokens minted ahead per job type (see secrets.vault.spareTokens). @defaultValue 0 */
  spareTokens?: number;
  /** Secrets Vault mints per job (secrets.items.*.dynamic), by name. */
  dynamic?: ReadonlyMap<string, DynamicSecret>;
  requestTimeoutMs: number;
  /** For an https address: CA, client certificate and key, server name (secrets.vault.tls, loaded). @defaultValue Node's bundled roots */
  tls?: ConnectionOptions;
  logger: Logger;
  /** @defaultValue the system clock */
  clock?: Clock;
}

/** The job id a token minted ahead is minted for. */
const SPARE = '(spare)';

/** A job token and when it was minted (a spare's age decides whether it still covers a whole job). */
interface Minted {
  token: string;
  accessor: string;
  mintedAt: number;
  /** Minted ahead (not for this job). */
  spare?: boolean;
}

/** A job token's metadata as the supervisor that minted it wrote it (only tokens noted in a ledger have `supervisor`). */
const tokenMeta = z.object({ job_id: z.string().min(1), job_type: z.string().min(1), supervisor: z.string().min(1) });

export { nodeVaultClient, vaultError, vaultHttpsAgent } from './vault-http.js';

/**
 * HashiCorp Vault (or OpenBao) KV v2. The supervisor's own token can do nothing but mint job
 * tokens through a token role, renew itself and revoke by accessor. Each job gets a child token
 * whose policy reads exactly its type's secrets, expires shortly after the job's timeout, has
 * bounded uses and cannot be renewed. The token is revoked by accessor at job end, so least
 * privilege is enforced by Vault itself.
 */
export class VaultProvider implements SecretProvider {
  readonly kind = 'vault' as const;
  readonly #o: VaultProviderOptions;
  readonly #client: nodeVault.client;
  readonly #http: VaultHttp;
  readonly #clock: Clock;
  #token: string | null = null;
  #renewTimer: NodeJS.Timeout | null = null;
  /** Job tokens minted ahead, per (type, names, timeout), oldest first. */
  readonly #spares = new Map<string, Promise<Minted>[]>();
  #closed = false;
  #loggingIn: Promise<string> | null = null;

  constructor(options: VaultProviderOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#http = new VaultHttp({
      address: options.address,
      requestTimeoutMs: options.requestTimeoutMs,
      ...(options.tls ? { tls: options.tls } : {}),
    });
    this.#client = nodeVaultClient(options.address, options.requestTimeoutMs);
  }

  #path(kind: 'data' | 'metadata' | 'destroy', name?: string, pending = false): string {
    return `${this.#o.mount}/${kind}/${this.#o.prefix}${pending ? '-pending' : ''}${name ? `/${name}` : ''}`;
  }

  policyName(jobType: string): string {
    return `${this.#o.policyPrefix}${jobType}`;
  }

  /** The supervisor's token: logs in (AppRole) once and keeps the token renewed. */
  async #supervisorToken(): Promise<string> {
    if (this.#token) return this.#token;
    this.#loggingIn ??= this.#login().finally(() => (this.#loggingIn = null));
    return this.#loggingIn;
  }

  async #login(): Promise<string> {
    const auth = this.#o.auth;
    let ttlSeconds = 0;
    if (auth.method === 'token') {
      this.#token = auth.token;
      const self = await this.#http
        .read(vaultAnswers.lookupSelf, auth.token, 'GET', 'auth/token/lookup-self')
        .catch((err: unknown) => {
          this.#token = null;
          throw vaultError(err, 'token lookup');
        });
      ttlSeconds = self.data.renewable ? self.data.ttl : 0;
    } else {
      const res = await this.#client
        .request({
          method: 'POST',
          path: `/auth/${auth.mount}/login`,
          json: { role_id: auth.roleId, secret_id: auth.secretId },
          timeout: this.#o.requestTimeoutMs,
          ...this.#http.agents,
        })
        .catch((err: unknown) => {
          throw vaultError(err, 'AppRole login');
        });
      const a = vaultAnswers.approleLogin.safeParse(res);
      if (!a.success) throw vaultError(new Error('AppRole login answered without auth.client_token'), 'AppRole login');
      this.#token = a.data.auth.client_token;
      ttlSeconds = a.data.auth.lease_duration;
    }
    this.#scheduleRenewal(ttlSeconds);
    return required(this.#token, 'Vault login: client token');
  }

  #scheduleRenewal(ttlSeconds: number): void {
    if (this.#renewTimer) clearTimeout(this.#renewTimer);
    if (!ttlSeconds) return;
    this.#renewTimer = setTimeout(() => void this.#renew(), Math.max(1000, (ttlSeconds * 1000) / 2));
    this.#renewTimer.unref();
  }

  async #renew(): Promise<void> {
    const token = this.#token;
    if (!token) return;
    try {
      const res = await this.#http.read(vaultAnswers.renewSelf, token, 'POST', 'auth/token/renew-self', {});
      this.#scheduleRenewal(res.auth.lease_duration);
    } catch (err) {
      this.#o.logger.warn('vault token renewal failed; logging in again', { error: toError(err).message });
      this.#token = null;
      await this.#supervisorToken().catch((e: unknown) =>
        this.#o.logger.error('vault login failed', { error: toError(e).message }),
      );
    }
  }

  /**
   * The job's token: a spare minted ahead for the same type, names and timeout when one is young
   * enough (its TTL still covers the whole job), else a fresh one. A spare too old is revoked
   * unused; replacements are minted when the job releases its lease (its read is not slowed by
   * them).
   */
  async #jobToken(request: LeaseRequest): Promise<Minted> {
    // A token that will mint dynamic credentials is minted for its job: its metadata names the job
    // and the supervisor, which is what a ledger sweep trusts (a spare names neither).
    if (this.#spareCount() === 0 || request.names.some((n) => this.#o.dynamic?.has(n))) return this.#mint(request);
    const key = this.#spareKey(request);
    let spares = this.#spares.get(key);
    if (!spares) this.#spares.set(key, (spares = []));
    let token: Minted | null = null;
    while (!token && spares.length) {
      const spare = spares.shift();
      const minted = await spare?.catch(() => null);
      if (!minted) continue;
      if (this.#clock.now() - minted.mintedAt < this.#o.tokenTtlMarginMs) token = { ...minted, spare: true };
      else void this.#revoke(minted.accessor).catch(this.#revokeFailed('a spare job token too old to use'));
    }
    return token ?? this.#mint(request);
  }

  /** Mints spares up to secrets.vault.spareTokens for this request's kind, after a job is done with Vault. */
  #refill(request: LeaseRequest): void {
    const spares = this.#spares.get(this.#spareKey(request));
    while (spares && !this.#closed && spares.length < this.#spareCount()) {
      const next = this.#mint({ ...request, jobId: SPARE });
      next.catch(() => undefined);
      spares.push(next);
    }
  }

  /** Spares kept per kind of job; none when tokenTtlMarginMs is 0 (a spare would never cover a whole job). */
  #spareCount(): number {
    return this.#o.tokenTtlMarginMs > 0 ? (this.#o.spareTokens ?? 0) : 0;
  }

  #spareKey(request: LeaseRequest): string {
    return `${request.jobType}\n${request.names.join(',')}\n${request.ttlMs}`;
  }

  /** Revokes the spares (best effort) and forgets them. */
  #dropSpares(): void {
    const spares = [...this.#spares.values()].flat();
    this.#spares.clear();
    for (const s of spares) void s.then((m) => this.#revoke(m.accessor)).catch(this.#revokeFailed('a spare job token'));
  }

  /** Logs a failed best-effort revoke: the token still ends with its TTL. */
  #revokeFailed(what: string): (err: unknown) => void {
    return warnOnFailure(this.#o.logger, `revoking ${what} failed; it expires by its TTL`);
  }

  async #revoke(accessor: string): Promise<void> {
    await this.#http.call(await this.#supervisorToken(), 'POST', 'auth/token/revoke-accessor', { accessor });
  }

  /** Mints the job token; one retry after re-login if the supervisor's own token expired. */
  async #mint(request: LeaseRequest): Promise<Minted> {
    const body = {
      policies: [this.policyName(request.jobType)],
      ttl: `${Math.ceil((request.ttlMs + this.#o.tokenTtlMarginMs) / 1000)}s`,
      explicit_max_ttl: `${Math.ceil((request.ttlMs + this.#o.tokenTtlMarginMs) / 1000)}s`,
      num_uses: Math.max(1, request.names.length * this.#o.readsPerSecret),
      renewable: false,
      no_default_policy: true,
      display_name: `job-${request.jobType}`,
      // A spare is not a job's yet: it says so instead of naming one.
      meta:
        request.jobId === SPARE
          ? { job_type: request.jobType, spare: 'true' }
          : {
              job_id: request.jobId,
              job_type: request.jobType,
              ...(request.ledger ? { supervisor: request.ledger.owner } : {}),
            },
    };
    for (let attempt = 0; ; attempt++) {
      const token = await this.#supervisorToken();
      try {
        const res = await this.#http.read(
          vaultAnswers.tokenCreated,
          token,
          'POST',
          `auth/token/create/${this.#o.tokenRole}`,
          body,
        );
        return { token: res.auth.client_token, accessor: res.auth.accessor, mintedAt: this.#clock.now() };
      } catch (err) {
        const e = vaultError(err, 'minting the job token');
        // Vault answers an expired or revoked token with a plain 403, like a missing permission:
        // ask whether our own token is still alive before calling it either.
        if (
          (e.code === 'SECRET_AUTH_EXPIRED' || e.code === 'SECRET_PERMISSION_DENIED') &&
          !(await this.#tokenAlive(token))
        ) {
          this.#token = null;
          if (attempt === 0) continue;
          throw new SecretUnavailableError(
            'SECRET_AUTH_EXPIRED',
            'Vault authentication expired and logging in again did not help. Fix: check the AppRole (VAULT_ROLE_ID/VAULT_SECRET_ID) and its token TTLs.',
            { retryable: true, cause: err },
          );
        }
        throw e;
      }
    }
  }

  async #tokenAlive(token: string): Promise<boolean> {
    try {
      await this.#http.call(token, 'GET', 'auth/token/lookup-self');
      return true;
    } catch {
      return false;
    }
  }

  async lease(request: LeaseRequest): Promise<SecretLease> {
    let minted = await this.#jobToken(request);
    let token: string | null = minted.token;
    const credentials = new JobCredentials();
    /** Accessors noted in the ledger (a token that mints a dynamic credential is noted first). */
    const held = new Set<string>();
    /** One read with the job token; a spare whose login died is replaced by a token minted now. */
    const get = async (path: string, name: string, note: boolean): Promise<unknown> => {
      if (!token)
        throw new SecretUnavailableError('SECRET_AUTH_EXPIRED', `job token for ${request.jobId} was already revoked`);
      const hold = async (): Promise<void> => {
        if (!note || !request.ledger || held.has(minted.accessor)) return;
        await request.ledger
          .hold({
            accessor: minted.accessor,
            jobId: request.jobId,
            jobType: request.jobType,
            expiresAt: this.#clock.now() + request.ttlMs + this.#o.tokenTtlMarginMs,
          })
          .catch((err: unknown) => {
            throw new SecretUnavailableError(
              'SECRET_PROVIDER_UNAVAILABLE',
              `secret "${name}" is not minted: the job token could not be noted in Redis first (${toError(err).message}), so no other supervisor could revoke it should this one die. Fix: check the Redis connection.`,
              { retryable: true, cause: err },
            );
          });
        held.add(minted.accessor);
      };
      try {
        await hold();
        return await this.#http.call(token, 'GET', path);
      } catch (err) {
        if (err instanceof SecretUnavailableError && !statusOf(err)) throw err;
        const e = vaultError(err, 'read', name);
        // A spare dies with the login it was minted under (its parent, the supervisor's token,
        // revoked or expired): then drop the spares and go on with a token minted now. A job token
        // may not look itself up, so the parent's life decides.
        const refused = e.code === 'SECRET_AUTH_EXPIRED' || e.code === 'SECRET_PERMISSION_DENIED';
        if (!minted.spare || !refused || (this.#token && (await this.#tokenAlive(this.#token)))) throw e;
        this.#token = null;
        this.#dropSpares();
        void this.#revoke(minted.accessor).catch(this.#revokeFailed('a spare job token of an expired login'));
        minted = await this.#mint(request);
        token = minted.token;
        try {
          await hold();
          return await this.#http.call(token, 'GET', path);
        } catch (again) {
          throw again instanceof SecretUnavailableError && !statusOf(again) ? again : vaultError(again, 'read', name);
        }
      }
    };
    // Zero-filled at release, like the values of every other provider's lease.
    const handed: Uint8Array[] = [];
    return {
      read: async (name: string): Promise<SecretValue> => {
        const dynamic = this.#o.dynamic?.get(name);
        if (dynamic) {
          const v = await credentials.get(name, dynamic, () => get(dynamic.path, name, true));
          handed.push(v.value);
          return v;
        }
        const answer = vaultAnswers.kvRead.safeParse(await get(this.#path('data', name), name, false));
        if (!answer.success)
          throw new SecretUnavailableError(
            'SECRET_PROVIDER_UNAVAILABLE',
            `Vault's answer for secret "${name}" is not a KV v2 read (${answer.error.issues[0]?.message ?? 'unexpected shape'}). Fix: check secrets.vault.mount is a KV v2 mount.`,
          );
        const res = answer.data;
        const raw = res.data.data?.value;
        if (typeof raw !== 'string') {
          throw new SecretUnavailableError(
            'SECRET_NOT_FOUND',
            `Vault entry for secret "${name}" has no string field "value". Fix: vault kv put ${this.#o.mount}/${this.#o.prefix}/${name} value=…`,
            { retryable: false },
          );
        }
        const value = utf8Bytes(raw);
        handed.push(value);
        return { value, version: String(res.data.metadata.version) };
      },
      release: async () => {
        token = null;
        for (const v of handed.splice(0)) v.fill(0);
        this.#refill(request);
        const sup = await this.#supervisorToken();
        // Each credential is revoked on its own first: Vault destroys it (drops the database user)
        // before answering, so it is gone when the job is reported done. Revoking the token then
        // ends anything else it holds.
        const ended = await credentials.end((leaseId) =>
          this.#http.call(sup, 'POST', 'sys/leases/revoke', { lease_id: leaseId }),
        );
        try {
          await this.#http.call(sup, 'POST', 'auth/token/revoke-accessor', { accessor: minted.accessor });
        } catch (err) {
          const e = vaultError(err, `revoking job token of ${request.jobId} (it expires by TTL)`);
          if (!ended.length) throw e;
          // The credentials' own revocations are what the caller audits; the token's failure is logged.
          this.#o.logger.warn(e.message, { jobId: request.jobId });
          return ended;
        }
        for (const accessor of held)
          await request.ledger?.drop(accessor).catch(
            warnOnFailure(this.#o.logger, 'a revoked job token stays noted in the ledger; a sweep forgets it', {
              jobId: request.jobId,
            }),
          );
        return ended;
      },
    };
  }

  /**
   * What Vault says of the token behind `accessor` (a ledger sweep's only source of truth): a fleet
   * job token (minted with a `<policyPrefix><job_type>` policy and a supervisor in its metadata) and
   * whose, a token that is none of ours, or null when Vault knows no such token.
   */
  async inspectAccessor(accessor: string): Promise<TokenInfo> {
    let res: z.output<typeof vaultAnswers.lookupAccessor>;
    try {
      res = await this.#http.read(
        vaultAnswers.lookupAccessor,
        await this.#supervisorToken(),
        'POST',
        'auth/token/lookup-accessor',
        {
          accessor,
        },
      );
    } catch (err) {
      if (statusOf(err) === 400 && /invalid accessor|not found/i.test(toError(err).message)) return null;
      throw vaultError(err, 'looking up a job token by accessor (run `fleet vault setup` to grant it)');
    }
    const meta = tokenMeta.safeParse(res.data.meta);
    const policies = z.array(z.string()).safeParse(res.data.policies);
    if (!meta.success || !policies.success) return { fleet: false };
    const { job_id: jobId, job_type: jobType, supervisor } = meta.data;
    return policies.data.includes(this.policyName(jobType))
      ? { fleet: true, supervisor, jobId, jobType }
      : { fleet: false };
  }

  /**
   * Revokes a job token by accessor (and with it every lease it minted), for a ledger sweep after a
   * supervisor died. A token Vault no longer knows (expired, already revoked) counts as revoked.
   */
  async revokeAccessor(accessor: string): Promise<void> {
    try {
      await this.#revoke(accessor);
    } catch (err) {
      if (statusOf(err) === 400 && /invalid accessor|not found/i.test(toError(err).message)) return;
      throw vaultError(err, 'revoking an orphaned job token');
    }
  }

  /**
   * Rotation: a provider bound to a short-lived token that can write exactly `secret` (and its
   * pending path); `release()` revokes the token. So a rotation cannot touch any other secret,
   * enforced by Vault.
   */
  async scopedTo(secret: string, ttlMs = 300_000): Promise<{ provider: VaultProvider; release(): Promise<void> }> {
    const sup = await this.#supervisorToken();
    let res: z.output<typeof vaultAnswers.tokenCreated>;
    try {
      res = await this.#http.read(vaultAnswers.tokenCreated, sup, 'POST', `auth/token/create/${ROTATE_TOKEN_ROLE}`, {
        policies: [`${ROTATE_POLICY_PREFIX}${secret}`],
        ttl: `${Math.ceil(ttlMs / 1000)}s`,
        renewable: false,
        display_name: `rotate-${secret}`,
        meta: { rotating: secret },
      });
    } catch (err) {
      throw vaultError(
        err,
        `minting the rotation token (run \`fleet vault setup\` after adding a rotation policy)`,
        secret,
      );
    }
    const provider = new VaultProvider({ ...this.#o, auth: { method: 'token', token: res.auth.client_token } });
    return {
      provider,
      // Like a job token's: a failed revoke is reported (the caller logs it); the token still
      // expires by its TTL.
      release: async () => {
        await provider.close();
        try {
          await this.#http.call(await this.#supervisorToken(), 'POST', 'auth/token/revoke-accessor', {
            accessor: res.auth.accessor,
          });
        } catch (err) {
          throw vaultError(
            err,
            `revoking the rotation token of ${secret} (it expires by TTL in ${Math.ceil(ttlMs / 1000)} s)`,
            secret,
          );
        }
      },
    };
  }

  /**
   * `fleet doctor`: mints a short-lived job token for `jobType` through the token role and checks
   * it can read each of `names` (values are zeroed at once); the token is revoked afterwards.
   * Returns a problem description, or null.
   */
  async probeJobPolicy(jobType: string, names: readonly string[]): Promise<string | null> {
    const lease = await this.lease({ jobId: `doctor.${Date.now()}`, jobType, names, ttlMs: 10_000 }).catch(
      (err: unknown) => toError(err),
    );
    if (lease instanceof Error) return `cannot mint a job token through role "${this.#o.tokenRole}": ${lease.message}`;
    try {
      for (const name of names) {
        try {
          (await lease.read(name)).value.fill(0);
        } catch (err) {
          return `a ${jobType} job token cannot read "${name}": ${toError(err).message}`;
        }
      }
      return null;
    } finally {
      await lease.release().catch(() => undefined);
    }
  }

  async write(name: string, value: Uint8Array): Promise<{ version: string }> {
    const token = await this.#supervisorToken();
    try {
      const res = await this.#http.read(vaultAnswers.kvWritten, token, 'POST', this.#path('data', name), {
        data: { value: Buffer.from(value).toString('utf8') },
      });
      return { version: String(res.data.version) };
    } catch (err) {
      throw vaultError(err, 'write', name);
    }
  }

  /**
   * Rotation: the pending value sits at `<prefix>-pending/<name>` (KV v2 has no pending state),
   * so jobs keep reading the current version until promotion.
   */
  async writePending(name: string, value: Uint8Array): Promise<{ version: string }> {
    const token = await this.#supervisorToken();
    try {
      const res = await this.#http.read(vaultAnswers.kvWritten, token, 'POST', this.#path('data', name, true), {
        data: { value: Buffer.from(value).toString('utf8') },
      });
      return { version: `pending-${res.data.version}` };
    } catch (err) {
      throw vaultError(err, 'write pending', name);
    }
  }

  readCurrent(name: string): Promise<SecretValue> {
    return this.readVersion(name, 'current');
  }

  async readVersion(name: string, version: string): Promise<SecretValue> {
    const token = await this.#supervisorToken();
    const pending = version.startsWith('pending-');
    const v = pending ? version.slice('pending-'.length) : version;
    let res: z.output<typeof vaultAnswers.kvRead>;
    try {
      res = await this.#http.read(
        vaultAnswers.kvRead,
        token,
        'GET',
        version === 'current'
          ? this.#path('data', name)
          : `${this.#path('data', name, pending)}?version=${encodeURIComponent(v)}`,
      );
    } catch (err) {
      throw vaultError(err, `read version ${version}`, name);
    }
    const raw = res.data.data?.value;
    if (typeof raw !== 'string')
      throw new SecretUnavailableError(
        'SECRET_NOT_FOUND',
        `secret "${name}" version ${version} has no value (destroyed or deleted)`,
      );
    return { value: utf8Bytes(raw), version: version === 'current' ? String(res.data.metadata.version) : version };
  }

  /** Writes the pending value as the new current KV version; the previous one stays readable by version. */
  async promote(name: string, pendingVersion: string): Promise<{ version: string }> {
    const pending = await this.readVersion(name, pendingVersion);
    try {
      const { version } = await this.write(name, pending.value);
      await this.retire(name, pendingVersion);
      return { version };
    } finally {
      pending.value.fill(0);
    }
  }

  async retire(name: string, version: string): Promise<void> {
    const token = await this.#supervisorToken();
    try {
      if (version.startsWith('pending-')) await this.#http.call(token, 'DELETE', this.#path('metadata', name, true));
      else {
        // The current version is never retired (as in every other provider): jobs read it.
        const m = await this.#http.read(vaultAnswers.kvMetadata, token, 'GET', this.#path('metadata', name));
        if (m.data.current_version === Number(version)) return;
        await this.#http.call(token, 'POST', this.#path('destroy', name), { versions: [Number(version)] });
      }
    } catch (err) {
      throw vaultError(err, `retire version ${version}`, name);
    }
  }

  async list(): Promise<SecretMetadata[]> {
    const token = await this.#supervisorToken();
    let keys: string[];
    try {
      keys = (await this.#http.read(vaultAnswers.keys, token, 'LIST', this.#path('metadata'))).data.keys;
    } catch (err) {
      if (statusOf(err) === 404) return [];
      throw vaultError(err, 'list');
    }
    return Promise.all(
      keys.map(async (name) => {
        const m = await this.#http.read(vaultAnswers.kvMetadata, token, 'GET', this.#path('metadata', name));
        return { name, version: String(m.data.current_version), updatedAt: Date.parse(m.data.updated_time) };
      }),
    );
  }

  async remove(name: string): Promise<void> {
    const token = await this.#supervisorToken();
    await this.#http.call(token, 'DELETE', this.#path('metadata', name)).catch((err: unknown) => {
      throw vaultError(err, 'delete', name);
    });
  }

  async check(): Promise<void> {
    const token = await this.#supervisorToken();
    await this.#http.call(token, 'GET', 'auth/token/lookup-self').catch((err: unknown) => {
      throw vaultError(err, 'token lookup');
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    // Spares never handed to a job are revoked (they would otherwise live out their TTL).
    const spares = [...this.#spares.values()].flat();
    this.#spares.clear();
    await Promise.all(
      spares.map(async (s) => {
        const minted = await s.catch(() => null);
        if (minted) await this.#revoke(minted.accessor).catch(this.#revokeFailed('an unused spare job token at close'));
      }),
    );
    if (this.#renewTimer) clearTimeout(this.#renewTimer);
    this.#renewTimer = null;
    this.#token = null;
    this.#http.destroy();
  }
}
