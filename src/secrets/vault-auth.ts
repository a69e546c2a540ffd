/**
 * The supervisor's (or a rotator's) own Vault login: a token given as is, or an AppRole login, kept
 * renewed at half its TTL and logged in again when renewal fails. Job tokens are minted with it;
 * it never reads a secret for a job itself.
 */
import type nodeVault from 'node-vault';
import { toError } from '../errors.js';
import { required } from '../guards.js';
import type { Logger } from '../observability/logger.js';
import { nodeVaultClient, vaultAnswers, vaultError, type VaultHttp } from './vault-http.js';

export type VaultAuth =
  { method: 'token'; token: string } | { method: 'approle'; roleId: string; secretId: string; mount: string };

export interface VaultLoginOptions {
  address: string;
  auth: VaultAuth;
  requestTimeoutMs: number;
  /** The transport (its keep-alive agents also carry the AppRole login). */
  http: VaultHttp;
  logger: Logger;
}

export class VaultLogin {
  readonly #o: VaultLoginOptions;
  /** node-vault, for the AppRole login only; every other call goes through `http`. */
  readonly #client: nodeVault.client;
  #token: string | null = null;
  #renewTimer: NodeJS.Timeout | null = null;
  #loggingIn: Promise<string> | null = null;

  constructor(options: VaultLoginOptions) {
    this.#o = options;
    this.#client = nodeVaultClient(options.address, options.requestTimeoutMs);
  }

  /** The token held now, if any (not checked with Vault). */
  get current(): string | null {
    return this.#token;
  }

  /** The login's token: logs in (AppRole) once and keeps the token renewed. */
  async token(): Promise<string> {
    if (this.#token) return this.#token;
    this.#loggingIn ??= this.#login().finally(() => (this.#loggingIn = null));
    return this.#loggingIn;
  }

  /** Drops the token held (Vault refused it): the next `token()` logs in again. */
  forget(): void {
    this.#token = null;
  }

  /** Whether Vault still takes `token` (a token that may look itself up). */
  async alive(token: string): Promise<boolean> {
    try {
      await this.#o.http.call(token, 'GET', 'auth/token/lookup-self');
      return true;
    } catch {
      return false;
    }
  }

  /** Stops renewing and forgets the token (it is not revoked: it ends by its TTL). */
  close(): void {
    if (this.#renewTimer) clearTimeout(this.#renewTimer);
    this.#renewTimer = null;
    this.#token = null;
  }

  async #login(): Promise<string> {
    const auth = this.#o.auth;
    let ttlSeconds = 0;
    if (auth.method === 'token') {
      this.#token = auth.token;
      const self = await this.#o.http
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
          ...this.#o.http.agents,
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
      const res = await this.#o.http.read(vaultAnswers.renewSelf, token, 'POST', 'auth/token/renew-self', {});
      this.#scheduleRenewal(res.auth.lease_duration);
    } catch (err) {
      this.#o.logger.warn('vault token renewal failed; logging in again', { error: toError(err).message });
      this.#token = null;
      await this.token().catch((e: unknown) =>
        this.#o.logger.error('vault login failed', { error: toError(e).message }),
      );
    }
  }
}
