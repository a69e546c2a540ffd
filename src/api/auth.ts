import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { AuthError, ForbiddenError } from '../errors.js';

export interface ProducerIdentity {
  name: string;
  /** SHA-256 (hex) of its bearer token; several while a token is rotated. */
  tokenSha256: string | readonly string[];
  jobTypes: readonly string[];
  admin?: boolean;
  /** Job types whose jobs it may read although others enqueued them (`"*"` for all). */
  read?: readonly string[];
}

/**
 * Whether `p` may see a job: its own, any job of a type in its `read` scope, or any job at all for
 * an admin. Callers answer 404 otherwise, so job ids do not reveal that a job exists.
 */
export function maySeeJob(p: ProducerIdentity, job: { owner: string; type: string }): boolean {
  return p.admin === true || job.owner === p.name || (p.read ?? []).some((t) => t === '*' || t === job.type);
}

/** Whether `p` may cancel a job: its own, or any as an admin (a read scope does not grant it). */
export function mayCancelJob(p: ProducerIdentity, job: { owner: string }): boolean {
  return p.admin === true || job.owner === p.name;
}

export function sha256Hex(value: string): string {
  return createHash('sha256').update(value).digest('hex');
}

/**
 * Bearer-token authentication for producers. Only SHA-256 hashes of tokens are held; an incoming
 * token is hashed and looked up, so the comparison never touches a stored token.
 */
export class ProducerAuth {
  readonly #byHash: Map<string, ProducerIdentity>;

  constructor(producers: readonly ProducerIdentity[]) {
    this.#byHash = new Map(
      producers.flatMap((p) =>
        (typeof p.tokenSha256 === 'string' ? [p.tokenSha256] : p.tokenSha256).map((h) => [h, p]),
      ),
    );
  }

  get size(): number {
    return this.#byHash.size;
  }

  /** The producer presenting this `Authorization` header; throws {@link AuthError} otherwise. */
  authenticate(header: string | undefined): ProducerIdentity {
    if (!header) throw new AuthError('missing Authorization header. Fix: send "Authorization: Bearer <token>".');
    const token = /^Bearer ([\x21-\x7e]{16,512})$/.exec(header)?.[1];
    if (token === undefined)
      throw new AuthError('Authorization header must be "Bearer <token>" (16–512 visible ASCII characters)');
    const p = this.#byHash.get(sha256Hex(token));
    if (!p) throw new AuthError('unknown or revoked token');
    return p;
  }

  /** Throws {@link ForbiddenError} unless the producer may use this job type. */
  authorize(p: ProducerIdentity, jobType: string): void {
    if (!p.jobTypes.includes('*') && !p.jobTypes.includes(jobType)) {
      throw new ForbiddenError(
        `producer "${p.name}" may not use job type "${jobType}". Fix: add it to producers.${p.name}.jobTypes.`,
      );
    }
  }

  allows(p: ProducerIdentity, jobType: string): boolean {
    return p.jobTypes.includes('*') || p.jobTypes.includes(jobType);
  }
}

/**
 * For `npm start` with no producers configured: a random dev token kept in `<dataDir>/dev-token`
 * (mode 0600), allowed every job type. Returns the identity and the file holding the token.
 */
export function ensureDevToken(dataDir: string): { identity: ProducerIdentity; tokenFile: string } {
  const tokenFile = path.join(dataDir, 'dev-token');
  mkdirSync(dataDir, { recursive: true });
  if (!existsSync(tokenFile)) {
    writeFileSync(tokenFile, `${randomBytes(24).toString('base64url')}\n`, { mode: 0o600 });
  }
  chmodSync(tokenFile, 0o600);
  const token = readFileSync(tokenFile, 'utf8').trim();
  return { identity: { name: 'dev', tokenSha256: sha256Hex(token), jobTypes: ['*'], admin: true }, tokenFile };
}
