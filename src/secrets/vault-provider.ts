import type { ConnectionOptions } from 'node:tls';
import type { z } from 'zod';
import { systemClock, type Clock } from '../clock.js';
import { toError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { VaultLogin, type VaultAuth } from './vault-auth.js';
import { JobCredentials, type DynamicSecret } from './vault-dynamic.js';
import { vaultAnswers, vaultError, VaultHttp } from './vault-http.js';
import { JobTokens } from './vault-job-tokens.js';
import { VaultKv } from './vault-kv.js';
import type { TokenInfo } from './lease-ledger.js';
import type { LeaseRequest, SecretLease, SecretMetadata, SecretProvider, SecretValue } from './provider.js';

/** Rotation tokens are minted through this role, each with the policy of exactly one secret. */
export const ROTATE_TOKEN_ROLE = 'fleet-rotate';
export const ROTATE_POLICY_PREFIX = 'fleet-rotate-';

export type { VaultAuth } from './vault-auth.js';

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

/**
 * HashiCorp Vault (or OpenBao) KV v2. The supervisor's own token can do nothing but mint job
 * tokens through a token role, renew itself and revoke by accessor. Each job gets a child token
 * whose policy reads exactly its type's secrets, expires shortly after the job's timeout, has
 * bounded uses and cannot be renewed. The token is revoked by accessor at job end, so least
 * privilege is enforced by Vault itself.
 *
 * The pieces: the transport (vault-http.ts), the supervisor's login (vault-auth.ts), job tokens
 * (vault-job-tokens.ts), the KV v2 store (vault-kv.ts) and dynamic credentials (vault-dynamic.ts).
 */
export class VaultProvider implements SecretProvider {
  readonly kind = 'vault' as const;
  readonly #o: VaultProviderOptions;
  readonly #http: VaultHttp;
  readonly #login: VaultLogin;
  readonly #jobTokens: JobTokens;
  readonly #kv: VaultKv;

  constructor(options: VaultProviderOptions) {
    this.#o = options;
    this.#http = new VaultHttp({
      address: options.address,
      requestTimeoutMs: options.requestTimeoutMs,
      ...(options.tls ? { tls: options.tls } : {}),
    });
    const http = this.#http;
    const login = new VaultLogin({
      address: options.address,
      auth: options.auth,
      requestTimeoutMs: options.requestTimeoutMs,
      http,
      logger: options.logger,
    });
    this.#login = login;
    this.#jobTokens = new JobTokens({
      http,
      login,
      clock: options.clock ?? systemClock,
      logger: options.logger,
      tokenRole: options.tokenRole,
      policyPrefix: options.policyPrefix,
      tokenTtlMarginMs: options.tokenTtlMarginMs,
      readsPerSecret: options.readsPerSecret,
      ...(options.spareTokens === undefined ? {} : { spareTokens: options.spareTokens }),
      isDynamic: (name) => options.dynamic?.has(name) ?? false,
    });
    this.#kv = new VaultKv({ http, mount: options.mount, prefix: options.prefix, token: () => login.token() });
  }

  policyName(jobType: string): string {
    return this.#jobTokens.policyName(jobType);
  }

  async lease(request: LeaseRequest): Promise<SecretLease> {
    const job = await this.#jobTokens.forJob(request);
    const credentials = new JobCredentials();
    // Zero-filled at release, like the values of every other provider's lease.
    const handed: Uint8Array[] = [];
    return {
      read: async (name: string): Promise<SecretValue> => {
        const dynamic = this.#o.dynamic?.get(name);
        const v = dynamic
          ? await credentials.get(name, dynamic, () => job.read(dynamic.path, name, true))
          : this.#kv.jobValue(name, await job.read(this.#kv.dataPath(name), name, false));
        handed.push(v.value);
        return v;
      },
      release: async () => {
        job.close();
        for (const v of handed.splice(0)) v.fill(0);
        const sup = await this.#login.token();
        // Each credential is revoked on its own first: Vault destroys it (drops the database user)
        // before answering, so it is gone when the job is reported done. Revoking the token then
        // ends anything else it holds.
        const ended = await credentials.end((leaseId) =>
          this.#http.call(sup, 'POST', 'sys/leases/revoke', { lease_id: leaseId }),
        );
        try {
          await job.revoke(sup);
        } catch (err) {
          if (!ended.length) throw err;
          // The credentials' own revocations are what the caller audits; the token's failure is logged.
          this.#o.logger.warn(toError(err).message, { jobId: request.jobId });
          return ended;
        }
        await job.forget();
        return ended;
      },
    };
  }

  /** @see JobTokens.inspectAccessor */
  inspectAccessor(accessor: string): Promise<TokenInfo> {
    return this.#jobTokens.inspectAccessor(accessor);
  }

  /** @see JobTokens.revokeAccessor */
  revokeAccessor(accessor: string): Promise<void> {
    return this.#jobTokens.revokeAccessor(accessor);
  }

  /**
   * Rotation: a provider bound to a short-lived token that can write exactly `secret` (and its
   * pending path); `release()` revokes the token. So a rotation cannot touch any other secret,
   * enforced by Vault.
   */
  async scopedTo(secret: string, ttlMs = 300_000): Promise<{ provider: VaultProvider; release(): Promise<void> }> {
    const sup = await this.#login.token();
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
          await this.#http.call(await this.#login.token(), 'POST', 'auth/token/revoke-accessor', {
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

  write(name: string, value: Uint8Array): Promise<{ version: string }> {
    return this.#kv.write(name, value);
  }

  /**
   * Rotation: the pending value sits at `<prefix>-pending/<name>` (KV v2 has no pending state),
   * so jobs keep reading the current version until promotion.
   */
  writePending(name: string, value: Uint8Array): Promise<{ version: string }> {
    return this.#kv.writePending(name, value);
  }

  readCurrent(name: string): Promise<SecretValue> {
    return this.#kv.readVersion(name, 'current');
  }

  readVersion(name: string, version: string): Promise<SecretValue> {
    return this.#kv.readVersion(name, version);
  }

  /** Writes the pending value as the new current KV version; the previous one stays readable by version. */
  promote(name: string, pendingVersion: string): Promise<{ version: string }> {
    return this.#kv.promote(name, pendingVersion);
  }

  retire(name: string, version: string): Promise<void> {
    return this.#kv.retire(name, version);
  }

  list(): Promise<SecretMetadata[]> {
    return this.#kv.list();
  }

  remove(name: string): Promise<void> {
    return this.#kv.remove(name);
  }

  async check(): Promise<void> {
    const token = await this.#login.token();
    await this.#http.call(token, 'GET', 'auth/token/lookup-self').catch((err: unknown) => {
      throw vaultError(err, 'token lookup');
    });
  }

  async close(): Promise<void> {
    // Spares never handed to a job are revoked (they would otherwise live out their TTL).
    await this.#jobTokens.close();
    this.#login.close();
    this.#http.destroy();
  }
}
