import {
  CreateAliasCommand,
  CreateKeyCommand,
  DecryptCommand,
  DescribeKeyCommand,
  EnableKeyRotationCommand,
  GenerateDataKeyCommand,
  GetKeyRotationStatusCommand,
  KMSClient,
  RotateKeyOnDemandCommand,
  type KMSClientConfig,
} from '@aws-sdk/client-kms';
import { z } from 'zod';
import type { RedisClient } from '../redis/connection.js';
import { SecretUnavailableError, toError } from '../errors.js';
import { awsClientConfig, awsError, sendMapped } from './aws.js';
import { required } from '../guards.js';
import { seal, unseal, type SealedBox } from './crypto.js';
import { kmsIndexKey, kmsSecretKey } from '../redis/keys.js';
import { declaredLease } from './lease.js';
import type { LeaseRequest, SecretLease, SecretMetadata, SecretProvider, SecretValue } from './provider.js';

export interface KmsProviderOptions {
  keyId: string;
  region: string;
  /** For local KMS-API servers (moto, local-kms). @defaultValue AWS */
  endpoint?: string;
  /** Where the ciphertexts live (shared by every supervisor). */
  redis: RedisClient;
  keyPrefix: string;
  keepVersions: number;
  requestTimeoutMs: number;
}

/** One stored version: the data key encrypted by KMS, and the value sealed under that data key. */
/** One stored KMS envelope, validated when read back from Redis (anyone with Redis access can write there). */
const envelopeSchema = z.object({
  iv: z.string(),
  tag: z.string(),
  ct: z.string(),
  encryptedDataKey: z.string().min(1),
  keyId: z.string().min(1),
  createdAt: z.number(),
});
type Envelope = z.infer<typeof envelopeSchema> & SealedBox;

function parseEnvelope(name: string, version: string, raw: string): Envelope {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    parsed = null;
  }
  const r = envelopeSchema.safeParse(parsed);
  if (!r.success)
    throw new SecretUnavailableError(
      'SECRET_INTEGRITY',
      `the stored KMS envelope of secret "${name}" v${version} is not an envelope (${r.error.issues[0]?.path.join('.') || 'not JSON'}): it was altered in Redis. Fix: fleet secrets set ${name} --provider kms.`,
    );
  return r.data;
}

/** The EncryptionContext KMS binds into the encrypted data key: a key for one secret version opens nothing else. */
export function encryptionContext(name: string, version: string): Record<string, string> {
  return { 'fleet:secret': name, 'fleet:version': version };
}

function kmsError(err: unknown, what: string, secret?: string): SecretUnavailableError {
  const subject = secret ? `secret "${secret}"` : 'KMS';
  return awsError(
    err,
    'KMS',
    what,
    subject,
    {
      InvalidCiphertextException: [
        'SECRET_INTEGRITY',
        false,
        `KMS refused to decrypt the data key of ${subject}: the ciphertext or its encryption context does not match (tampered, or stored under another name/version).`,
      ],
      IncorrectKeyException: ['SECRET_INTEGRITY', false, `${subject} was encrypted under a different KMS key.`],
      AccessDeniedException: [
        'SECRET_PERMISSION_DENIED',
        false,
        `KMS denied ${what} for ${subject}. Fix: grant kms:Decrypt/GenerateDataKey on the key to the fleet's role.`,
      ],
      NotFoundException: [
        'SECRET_NOT_FOUND',
        false,
        `KMS key for ${subject} does not exist. Fix: check secrets.kms.keyId.`,
      ],
      DisabledException: ['SECRET_PERMISSION_DENIED', false, `KMS key for ${subject} is disabled. Fix: enable it.`],
      KMSInvalidStateException: [
        'SECRET_PROVIDER_UNAVAILABLE',
        true,
        `KMS key for ${subject} is in an invalid state (pending deletion/import?).`,
      ],
    },
    'check secrets.kms.endpoint/region and network',
  );
}

/**
 * AWS KMS envelope encryption. Each secret version is sealed (AES-256-GCM) under its own data key
 * from `GenerateDataKey`, whose EncryptionContext names the secret and version; only the
 * KMS-encrypted data key is stored. Reading calls `Decrypt` with that exact context.
 */
export class KmsProvider implements SecretProvider {
  readonly kind = 'kms' as const;
  readonly #o: KmsProviderOptions;
  readonly #kms: KMSClient;

  constructor(options: KmsProviderOptions) {
    this.#o = options;
    const cfg: KMSClientConfig = awsClientConfig(options);
    this.#kms = new KMSClient(cfg);
  }

  /** Sends one KMS command; failures become specific, named errors. */
  #send<T>(what: string, send: () => Promise<T>, secret?: string): Promise<T> {
    return sendMapped(send, (err) => kmsError(err, what, secret));
  }

  #key(name: string): string {
    return kmsSecretKey(this.#o.keyPrefix, name);
  }

  /** Names with a stored ciphertext (a set, because a keyspace SCAN does not span a cluster). */
  #index(): string {
    return kmsIndexKey(this.#o.keyPrefix);
  }

  async #decrypt(name: string, version: string, env: Envelope): Promise<SecretValue> {
    const res = await this.#send(
      'Decrypt',
      () =>
        this.#kms.send(
          new DecryptCommand({
            CiphertextBlob: Buffer.from(env.encryptedDataKey, 'base64'),
            EncryptionContext: encryptionContext(name, version),
            KeyId: env.keyId,
          }),
        ),
      name,
    );
    const dataKey = res.Plaintext;
    if (!dataKey)
      throw new SecretUnavailableError(
        'SECRET_PROVIDER_UNAVAILABLE',
        `KMS returned no plaintext data key for secret "${name}"`,
        { retryable: true },
      );
    try {
      return { value: unseal(dataKey, env, `fleet:${name}:${version}`, `KMS secret "${name}" v${version}`), version };
    } finally {
      dataKey.fill(0);
    }
  }

  readCurrent(name: string): Promise<SecretValue> {
    return this.readVersion(name);
  }

  async readVersion(name: string, version?: string): Promise<SecretValue> {
    // (version omitted: the current one)
    let fields: Record<string, string>;
    try {
      fields = await this.#o.redis.hgetall(this.#key(name));
    } catch (err) {
      throw new SecretUnavailableError(
        'SECRET_PROVIDER_UNAVAILABLE',
        `could not read the ciphertext of secret "${name}" from Redis: ${toError(err).message}`,
        { retryable: true, cause: err },
      );
    }
    const v = version ?? fields.current;
    const raw = v ? fields[`v${v}`] : undefined;
    if (!v || !raw)
      throw new SecretUnavailableError(
        'SECRET_NOT_FOUND',
        `secret "${name}" has no KMS ciphertext${version ? ` at version ${version}` : ''}. Fix: fleet secrets set ${name} --provider kms (value on stdin).`,
      );
    return this.#decrypt(name, v, parseEnvelope(name, v, raw));
  }

  lease(request: LeaseRequest): Promise<SecretLease> {
    return Promise.resolve(declaredLease(request, (name) => this.readVersion(name)));
  }

  write(name: string, value: Uint8Array): Promise<{ version: string }> {
    return this.#add(name, value, true);
  }

  writePending(name: string, value: Uint8Array): Promise<{ version: string }> {
    return this.#add(name, value, false);
  }

  async promote(name: string, pendingVersion: string): Promise<{ version: string }> {
    const key = this.#key(name);
    if (!(await this.#o.redis.hexists(key, `v${pendingVersion}`)))
      throw new SecretUnavailableError(
        'SECRET_NOT_FOUND',
        `secret "${name}" has no KMS version ${pendingVersion} to promote`,
      );
    await this.#o.redis.hset(key, 'current', pendingVersion, 'updatedAt', String(Date.now()));
    return { version: pendingVersion };
  }

  async retire(name: string, version: string): Promise<void> {
    const key = this.#key(name);
    if ((await this.#o.redis.hget(key, 'current')) !== version) await this.#o.redis.hdel(key, `v${version}`);
  }

  /**
   * Re-encrypts the current value under a fresh data key as a new pending version (the value does
   * not change): "encryption keys daily" without touching consumers.
   */
  async rewrapPending(name: string): Promise<{ version: string }> {
    const cur = await this.readVersion(name);
    try {
      return await this.#add(name, cur.value, false);
    } finally {
      cur.value.fill(0);
    }
  }

  async #add(name: string, value: Uint8Array, makeCurrent: boolean): Promise<{ version: string }> {
    const key = this.#key(name);
    const version = String(await this.#o.redis.hincrby(key, 'seq', 1));
    const dk = await this.#send(
      'GenerateDataKey',
      () =>
        this.#kms.send(
          new GenerateDataKeyCommand({
            KeyId: this.#o.keyId,
            KeySpec: 'AES_256',
            EncryptionContext: encryptionContext(name, version),
          }),
        ),
      name,
    );
    const plaintextKey = required(dk.Plaintext, 'KMS GenerateDataKey: Plaintext');
    const env: Envelope = {
      ...seal(plaintextKey, value, `fleet:${name}:${version}`),
      encryptedDataKey: Buffer.from(required(dk.CiphertextBlob, 'KMS GenerateDataKey: CiphertextBlob')).toString(
        'base64',
      ),
      keyId: dk.KeyId ?? this.#o.keyId,
      createdAt: Date.now(),
    };
    plaintextKey.fill(0);
    const stale = Number(version) - this.#o.keepVersions;
    const multi = this.#o.redis.multi().hset(key, `v${version}`, JSON.stringify(env));
    if (makeCurrent) multi.hset(key, 'current', version, 'updatedAt', String(env.createdAt));
    if (stale > 0 && String(stale) !== (await this.#o.redis.hget(key, 'current'))) multi.hdel(key, `v${stale}`);
    await multi.exec();
    await this.#o.redis.sadd(this.#index(), name);
    return { version };
  }

  async list(): Promise<SecretMetadata[]> {
    const out: SecretMetadata[] = [];
    for (const name of (await this.#o.redis.smembers(this.#index())).sort()) {
      const [current, updatedAt] = await this.#o.redis.hmget(this.#key(name), 'current', 'updatedAt');
      if (current) out.push({ name, version: current, updatedAt: Number(updatedAt) });
    }
    return out;
  }

  async remove(name: string): Promise<void> {
    await this.#o.redis.srem(this.#index(), name);
    const n = await this.#o.redis.del(this.#key(name));
    if (!n) throw new SecretUnavailableError('SECRET_NOT_FOUND', `secret "${name}" has no KMS ciphertext`);
  }

  async check(): Promise<void> {
    await this.#send('DescribeKey', () => this.#kms.send(new DescribeKeyCommand({ KeyId: this.#o.keyId })));
  }

  /**
   * Makes sure the configured key exists: when `keyId` is an alias that names no key, creates a
   * symmetric key and points the alias at it (`fleet kms ensure-key`, for dev KMS servers that keep
   * keys in memory). A key id or ARN that does not exist is an error; keys are never guessed.
   */
  async ensureKey(): Promise<{ keyId: string; created: boolean }> {
    try {
      const d = await this.#kms.send(new DescribeKeyCommand({ KeyId: this.#o.keyId }));
      return { keyId: required(d.KeyMetadata?.KeyId, 'KMS DescribeKey: KeyMetadata.KeyId'), created: false };
    } catch (err) {
      if (toError(err).name !== 'NotFoundException' || !this.#o.keyId.startsWith('alias/'))
        throw kmsError(err, 'DescribeKey');
    }
    const created = await this.#send('CreateKey', () =>
      this.#kms.send(
        new CreateKeyCommand({
          Description: `fleet secrets (${this.#o.keyId})`,
          KeySpec: 'SYMMETRIC_DEFAULT',
          KeyUsage: 'ENCRYPT_DECRYPT',
        }),
      ),
    );
    const keyId = required(created.KeyMetadata?.KeyId, 'KMS CreateKey: KeyMetadata.KeyId');
    await this.#send('CreateAlias', () =>
      this.#kms.send(new CreateAliasCommand({ AliasName: this.#o.keyId, TargetKeyId: keyId })),
    );
    return { keyId, created: true };
  }

  /** Customer-key rotation: turn on KMS's automatic rotation (yearly by default in AWS). */
  async enableKeyRotation(): Promise<void> {
    await this.#send('EnableKeyRotation', async () =>
      this.#kms.send(new EnableKeyRotationCommand({ KeyId: await this.#keyArnOrId() })),
    );
  }

  async keyRotationEnabled(): Promise<boolean> {
    const res = await this.#send('GetKeyRotationStatus', async () =>
      this.#kms.send(new GetKeyRotationStatusCommand({ KeyId: await this.#keyArnOrId() })),
    );
    return res.KeyRotationEnabled === true;
  }

  /** Customer-key rotation now (`fleet kms rotate-key`); stored data keys stay decryptable. */
  async rotateKeyNow(): Promise<void> {
    await this.#send('RotateKeyOnDemand', async () =>
      this.#kms.send(new RotateKeyOnDemandCommand({ KeyId: await this.#keyArnOrId() })),
    );
  }

  /** Rotation APIs take a key id or ARN, not an alias. */
  async #keyArnOrId(): Promise<string> {
    if (!this.#o.keyId.startsWith('alias/')) return this.#o.keyId;
    const d = await this.#kms.send(new DescribeKeyCommand({ KeyId: this.#o.keyId }));
    return required(d.KeyMetadata?.KeyId, 'KMS DescribeKey: KeyMetadata.KeyId');
  }

  close(): Promise<void> {
    this.#kms.destroy();
    return Promise.resolve();
  }
}
