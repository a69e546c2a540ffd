/**
 * The fleet's secrets in a KV v2 mount, under `<mount>/data/<prefix>/<name>`: read by version,
 * written, and rotated through a pending path `<prefix>-pending/<name>` (KV v2 has no pending state,
 * so jobs keep reading the current version until promotion). Every call is made with the token
 * `token()` gives (the supervisor's or a rotation's own); every answer is checked against its schema.
 */
import { utf8Bytes } from '../bytes.js';
import type { z } from 'zod';
import { SecretUnavailableError } from '../errors.js';
import type { SecretMetadata, SecretValue } from './provider.js';
import { statusOf, vaultAnswers, vaultError, type VaultHttp } from './vault-http.js';

export interface VaultKvOptions {
  http: VaultHttp;
  /** KV v2 mount. */
  mount: string;
  /** Folder under the mount holding the fleet's secrets. */
  prefix: string;
  /** The token every call is made with. */
  token(): Promise<string>;
}

const PENDING = 'pending-';

export class VaultKv {
  readonly #o: VaultKvOptions;

  constructor(options: VaultKvOptions) {
    this.#o = options;
  }

  #path(kind: 'data' | 'metadata' | 'destroy', name?: string, pending = false): string {
    return `${this.#o.mount}/${kind}/${this.#o.prefix}${pending ? '-pending' : ''}${name ? `/${name}` : ''}`;
  }

  /** Where a job token reads `name`'s current version. */
  dataPath(name: string): string {
    return this.#path('data', name);
  }

  /** A job's read of `name`: Vault's answer to a GET of {@link dataPath}, as the value the job gets. */
  jobValue(name: string, answer: unknown): SecretValue {
    const parsed = vaultAnswers.kvRead.safeParse(answer);
    if (!parsed.success)
      throw new SecretUnavailableError(
        'SECRET_PROVIDER_UNAVAILABLE',
        `Vault's answer for secret "${name}" is not a KV v2 read (${parsed.error.issues[0]?.message ?? 'unexpected shape'}). Fix: check secrets.vault.mount is a KV v2 mount.`,
      );
    const res = parsed.data;
    const raw = res.data.data?.value;
    if (typeof raw !== 'string') {
      throw new SecretUnavailableError(
        'SECRET_NOT_FOUND',
        `Vault entry for secret "${name}" has no string field "value". Fix: vault kv put ${this.#o.mount}/${this.#o.prefix}/${name} value=…`,
        { retryable: false },
      );
    }
    return { value: utf8Bytes(raw), version: String(res.data.metadata.version) };
  }

  async write(name: string, value: Uint8Array): Promise<{ version: string }> {
    const token = await this.#o.token();
    try {
      return { version: String(await this.#put(token, name, value, false)) };
    } catch (err) {
      throw vaultError(err, 'write', name);
    }
  }

  /** Rotation: the pending value sits at `<prefix>-pending/<name>`. */
  async writePending(name: string, value: Uint8Array): Promise<{ version: string }> {
    const token = await this.#o.token();
    try {
      return { version: `${PENDING}${await this.#put(token, name, value, true)}` };
    } catch (err) {
      throw vaultError(err, 'write pending', name);
    }
  }

  /** Writes `value` as a new KV version of `name` (or of its pending path); its version number. */
  async #put(token: string, name: string, value: Uint8Array, pending: boolean): Promise<number> {
    const res = await this.#o.http.read(vaultAnswers.kvWritten, token, 'POST', this.#path('data', name, pending), {
      data: { value: Buffer.from(value).toString('utf8') },
    });
    return res.data.version;
  }

  async readVersion(name: string, version: string): Promise<SecretValue> {
    const token = await this.#o.token();
    const pending = version.startsWith(PENDING);
    const v = pending ? version.slice(PENDING.length) : version;
    let res: z.output<typeof vaultAnswers.kvRead>;
    try {
      res = await this.#o.http.read(
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
    const token = await this.#o.token();
    const { http } = this.#o;
    try {
      if (version.startsWith(PENDING)) await http.call(token, 'DELETE', this.#path('metadata', name, true));
      else {
        // The current version is never retired (as in every other provider): jobs read it.
        const m = await http.read(vaultAnswers.kvMetadata, token, 'GET', this.#path('metadata', name));
        if (m.data.current_version === Number(version)) return;
        await http.call(token, 'POST', this.#path('destroy', name), { versions: [Number(version)] });
      }
    } catch (err) {
      throw vaultError(err, `retire version ${version}`, name);
    }
  }

  async list(): Promise<SecretMetadata[]> {
    const token = await this.#o.token();
    const { http } = this.#o;
    let keys: string[];
    try {
      keys = (await http.read(vaultAnswers.keys, token, 'LIST', this.#path('metadata'))).data.keys;
    } catch (err) {
      if (statusOf(err) === 404) return [];
      throw vaultError(err, 'list');
    }
    return Promise.all(
      keys.map(async (name) => {
        const m = await http.read(vaultAnswers.kvMetadata, token, 'GET', this.#path('metadata', name));
        return { name, version: String(m.data.current_version), updatedAt: Date.parse(m.data.updated_time) };
      }),
    );
  }

  async remove(name: string): Promise<void> {
    const token = await this.#o.token();
    await this.#o.http.call(token, 'DELETE', this.#path('metadata', name)).catch((err: unknown) => {
      throw vaultError(err, 'delete', name);
    });
  }
}
