/**
 * Job tokens: each job gets a child token of the supervisor's login, minted through a token role,
 * whose policy reads exactly its type's secrets, that expires shortly after the job's timeout, has
 * bounded uses and cannot be renewed. Tokens minted ahead (spares) serve the next job of the same
 * kind. A token is revoked by accessor at its job's end, or by a ledger sweep that finds it orphaned
 * (its metadata names the job and the supervisor that minted it).
 */
import { z } from 'zod';
import type { Clock } from '../clock.js';
import { SecretUnavailableError, toError } from '../errors.js';
import { warnOnFailure, type Logger } from '../observability/logger.js';
import type { TokenInfo } from './lease-ledger.js';
import type { LeaseRequest } from './provider.js';
import type { VaultLogin } from './vault-auth.js';
import { statusOf, vaultAnswers, vaultError, type VaultHttp } from './vault-http.js';

export interface JobTokensOptions {
  http: VaultHttp;
  /** The supervisor's login, which mints and revokes. */
  login: VaultLogin;
  clock: Clock;
  logger: Logger;
  /** Token role job tokens are minted through. */
  tokenRole: string;
  /** Job tokens carry the policy `<policyPrefix><jobType>`. */
  policyPrefix: string;
  /** Job tokens live this much longer than the job's timeout. */
  tokenTtlMarginMs: number;
  /** Reads allowed per declared secret on one job token (`num_uses`). */
  readsPerSecret: number;
  /** Job tokens minted ahead per kind of job. @defaultValue 0 */
  spareTokens?: number;
  /** Whether reading `name` mints a dynamic credential (its token must be minted for its job). */
  isDynamic(name: string): boolean;
}

/** One job's token, as its lease uses it. */
export interface JobToken {
  /**
   * One GET of `path` with the job token; with `note`, the token is noted in the job's ledger first.
   * A spare whose login died is replaced by a token minted now.
   */
  read(path: string, name: string, note: boolean): Promise<unknown>;
  /** Ends its use: reads are refused from now on, and spares are minted to replace it. */
  close(): void;
  /** Revokes the token by accessor with the supervisor's token `sup` (a failure names it; it still expires by TTL). */
  revoke(sup: string): Promise<void>;
  /** Forgets the revoked token's notes in the job's ledger (a failure is logged: a sweep forgets them). */
  forget(): Promise<void>;
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

/** Vault's answer about an accessor it does not know (the token expired or was revoked). */
const unknownAccessor = (err: unknown): boolean =>
  statusOf(err) === 400 && /invalid accessor|not found/i.test(toError(err).message);

export class JobTokens {
  readonly #o: JobTokensOptions;
  /** Job tokens minted ahead, per (type, names, timeout), oldest first. */
  readonly #spares = new Map<string, Promise<Minted>[]>();
  #closed = false;

  constructor(options: JobTokensOptions) {
    this.#o = options;
  }

  policyName(jobType: string): string {
    return `${this.#o.policyPrefix}${jobType}`;
  }

  /** The token of the job `request` leases for. */
  async forJob(request: LeaseRequest): Promise<JobToken> {
    const { http, login, clock } = this.#o;
    let minted = await this.#take(request);
    let token: string | null = minted.token;
    /** Accessors noted in the ledger (a token that mints a dynamic credential is noted first). */
    const held = new Set<string>();
    const hold = async (name: string, note: boolean): Promise<void> => {
      if (!note || !request.ledger || held.has(minted.accessor)) return;
      await request.ledger
        .hold({
          accessor: minted.accessor,
          jobId: request.jobId,
          jobType: request.jobType,
          expiresAt: clock.now() + request.ttlMs + this.#o.tokenTtlMarginMs,
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
    return {
      read: async (path, name, note) => {
        if (!token)
          throw new SecretUnavailableError('SECRET_AUTH_EXPIRED', `job token for ${request.jobId} was already revoked`);
        try {
          await hold(name, note);
          return await http.call(token, 'GET', path);
        } catch (err) {
          if (err instanceof SecretUnavailableError && !statusOf(err)) throw err;
          const e = vaultError(err, 'read', name);
          // A spare dies with the login it was minted under (its parent, the supervisor's token,
          // revoked or expired): then drop the spares and go on with a token minted now. A job token
          // may not look itself up, so the parent's life decides.
          const refused = e.code === 'SECRET_AUTH_EXPIRED' || e.code === 'SECRET_PERMISSION_DENIED';
          if (!minted.spare || !refused || (login.current && (await login.alive(login.current)))) throw e;
          login.forget();
          this.#dropSpares();
          void this.#revoke(minted.accessor).catch(this.#revokeFailed('a spare job token of an expired login'));
          minted = await this.#mint(request);
          token = minted.token;
          try {
            await hold(name, note);
            return await http.call(token, 'GET', path);
          } catch (again) {
            throw again instanceof SecretUnavailableError && !statusOf(again) ? again : vaultError(again, 'read', name);
          }
        }
      },
      close: () => {
        token = null;
        this.#refill(request);
      },
      revoke: async (sup) => {
        try {
          await http.call(sup, 'POST', 'auth/token/revoke-accessor', { accessor: minted.accessor });
        } catch (err) {
          throw vaultError(err, `revoking job token of ${request.jobId} (it expires by TTL)`);
        }
      },
      forget: async () => {
        for (const accessor of held)
          await request.ledger?.drop(accessor).catch(
            warnOnFailure(this.#o.logger, 'a revoked job token stays noted in the ledger; a sweep forgets it', {
              jobId: request.jobId,
            }),
          );
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
      res = await this.#o.http.read(
        vaultAnswers.lookupAccessor,
        await this.#o.login.token(),
        'POST',
        'auth/token/lookup-accessor',
        { accessor },
      );
    } catch (err) {
      if (unknownAccessor(err)) return null;
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
      if (unknownAccessor(err)) return;
      throw vaultError(err, 'revoking an orphaned job token');
    }
  }

  /** Revokes the spares never handed to a job (they would otherwise live out their TTL); mints no more. */
  async close(): Promise<void> {
    this.#closed = true;
    const spares = [...this.#spares.values()].flat();
    this.#spares.clear();
    await Promise.all(
      spares.map(async (s) => {
        const minted = await s.catch(() => null);
        if (minted) await this.#revoke(minted.accessor).catch(this.#revokeFailed('an unused spare job token at close'));
      }),
    );
  }

  /**
   * The job's token: a spare minted ahead for the same type, names and timeout when one is young
   * enough (its TTL still covers the whole job), else a fresh one. A spare too old is revoked
   * unused; replacements are minted when the job releases its lease (its read is not slowed by
   * them).
   */
  async #take(request: LeaseRequest): Promise<Minted> {
    // A token that will mint dynamic credentials is minted for its job: its metadata names the job
    // and the supervisor, which is what a ledger sweep trusts (a spare names neither).
    if (this.#spareCount() === 0 || request.names.some((n) => this.#o.isDynamic(n))) return this.#mint(request);
    const key = this.#spareKey(request);
    let spares = this.#spares.get(key);
    if (!spares) this.#spares.set(key, (spares = []));
    let token: Minted | null = null;
    while (!token && spares.length) {
      const spare = spares.shift();
      const minted = await spare?.catch(() => null);
      if (!minted) continue;
      if (this.#o.clock.now() - minted.mintedAt < this.#o.tokenTtlMarginMs) token = { ...minted, spare: true };
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
    await this.#o.http.call(await this.#o.login.token(), 'POST', 'auth/token/revoke-accessor', { accessor });
  }

  /** Mints the job token; one retry after re-login if the supervisor's own token expired. */
  async #mint(request: LeaseRequest): Promise<Minted> {
    const o = this.#o;
    const ttl = `${Math.ceil((request.ttlMs + o.tokenTtlMarginMs) / 1000)}s`;
    const body = {
      policies: [this.policyName(request.jobType)],
      ttl,
      explicit_max_ttl: ttl,
      num_uses: Math.max(1, request.names.length * o.readsPerSecret),
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
      const token = await o.login.token();
      try {
        const res = await o.http.read(
          vaultAnswers.tokenCreated,
          token,
          'POST',
          `auth/token/create/${o.tokenRole}`,
          body,
        );
        return { token: res.auth.client_token, accessor: res.auth.accessor, mintedAt: o.clock.now() };
      } catch (err) {
        const e = vaultError(err, 'minting the job token');
        // Vault answers an expired or revoked token with a plain 403, like a missing permission:
        // ask whether our own token is still alive before calling it either.
        if (
          (e.code === 'SECRET_AUTH_EXPIRED' || e.code === 'SECRET_PERMISSION_DENIED') &&
          !(await o.login.alive(token))
        ) {
          o.login.forget();
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
}
