/**
 * Dynamic secrets: credentials a Vault secrets engine creates for one job (the database engine's
 * `database/creds/<role>`, and any engine that answers a read with a lease). The job's own token
 * reads them, so each lease belongs to that token; the supervisor revokes every lease at job end,
 * and Vault revokes them with the token should the supervisor be gone by then.
 */
import { z } from 'zod';
import { SecretUnavailableError, toError } from '../errors.js';
import { utf8Bytes } from './crypto.js';
import type { LeaseEnd, SecretValue } from './provider.js';

/** A secret item's `dynamic` settings. */
export interface DynamicSecret {
  path: string;
  format?: string;
}

/** What Vault answers a read of a dynamic path with (only the fields used). */
const dynamicAnswer = z.object({
  lease_id: z.string().min(1),
  lease_duration: z.number().int().nonnegative(),
  data: z.record(z.string(), z.unknown()),
});

/** Fields that name rather than prove: not masked on their own (a user name in a log line is not a leak). */
const NAMING_FIELDS = new Set(['username', 'user', 'name', 'account', 'db_name']);

/**
 * The credential's fields as the sandbox gets them: `format` with `{field}` (as is) and
 * `{field:url}` (percent-encoded) filled in, or the fields as JSON. `maskAlso` holds every field
 * that proves (a password, a key) so that it is masked wherever it appears on its own.
 */
export function formatCredential(
  name: string,
  data: Readonly<Record<string, unknown>>,
  format?: string,
): { value: Uint8Array; maskAlso: Uint8Array[] } {
  const fields = new Map<string, string>();
  for (const [k, v] of Object.entries(data))
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') fields.set(k, String(v));
  let text: string;
  if (format === undefined) text = JSON.stringify(Object.fromEntries(fields));
  else
    text = format.replace(/\{([A-Za-z0-9_]+)(:url)?\}/g, (_whole, field: string, url?: string) => {
      const v = fields.get(field);
      if (v === undefined)
        throw new SecretUnavailableError(
          'SECRET_NOT_FOUND',
          `the dynamic credential of secret "${name}" has no field "${field}" (it has: ${[...fields.keys()].join(', ') || 'none'}). Fix: secrets.items.${name}.dynamic.format.`,
          { retryable: false },
        );
      return url ? encodeURIComponent(v) : v;
    });
  const maskAlso = [...fields].filter(([k]) => !NAMING_FIELDS.has(k)).map(([, v]) => utf8Bytes(v));
  return { value: utf8Bytes(text), maskAlso };
}

/**
 * The dynamic credentials of one job lease: minted once per name (a second read hands out a copy of
 * the same credential, never a second database user), remembered by lease id, revoked at the end.
 */
export class JobCredentials {
  readonly #minted = new Map<string, Promise<{ leaseId: string; value: Uint8Array; maskAlso: Uint8Array[] }>>();

  /** The credential for `name`, minted through `read` (one Vault read with the job token) on first use. */
  async get(name: string, spec: DynamicSecret, read: () => Promise<unknown>): Promise<SecretValue> {
    let p = this.#minted.get(name);
    if (!p) {
      p = read().then((answer) => {
        const a = dynamicAnswer.safeParse(answer);
        if (!a.success)
          throw new SecretUnavailableError(
            'SECRET_NOT_FOUND',
            `Vault's answer for secret "${name}" at ${spec.path} holds no lease: it is not a dynamic secret. Fix: point secrets.items.${name}.dynamic.path at a secrets engine that mints credentials (e.g. database/creds/<role>), or drop "dynamic" for a KV secret.`,
            { retryable: false },
          );
        return { leaseId: a.data.lease_id, ...formatCredential(name, a.data.data, spec.format) };
      });
      // A failed mint is not kept: the next read tries again.
      p.catch(() => this.#minted.delete(name));
      this.#minted.set(name, p);
    }
    const c = await p;
    return {
      value: new Uint8Array(c.value),
      version: c.leaseId,
      leaseId: c.leaseId,
      maskAlso: c.maskAlso,
    };
  }

  get size(): number {
    return this.#minted.size;
  }

  /**
   * Revokes every credential minted (each through `revoke`, which waits for the backend to destroy
   * it) and zero-fills what was kept. Never throws: a failure is reported in its `LeaseEnd`.
   */
  async end(revoke: (leaseId: string) => Promise<unknown>): Promise<LeaseEnd[]> {
    const minted = [...this.#minted];
    this.#minted.clear();
    const ends = await Promise.all(
      minted.map(async ([name, p]): Promise<LeaseEnd | null> => {
        const c = await p.catch(() => null);
        if (!c) return null;
        try {
          await revoke(c.leaseId);
          return { name, leaseId: c.leaseId };
        } catch (err) {
          return { name, leaseId: c.leaseId, error: toError(err).message };
        } finally {
          c.value.fill(0);
          for (const m of c.maskAlso) m.fill(0);
        }
      }),
    );
    return ends.filter((e): e is LeaseEnd => e !== null);
  }
}
