import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { DataNotSealedError, DataTamperedError } from '../errors.js';

/**
 * Job data sealed at rest (types with `encryptData`): what a Redis dump, an AOF copy or a replica
 * holds of a payload, result, progress value, failure reason or log line is an envelope
 *
 *     fleet:v1:<key version>:<base64url(iv ‖ ciphertext ‖ tag)>
 *
 * AES-256-GCM under the data key version named in clear (so a reader knows which version to load),
 * authenticated with the job's type, id, owner and the field: a ciphertext moved to another job,
 * type, owner or field, or an edited key version, fails to open. Pure: the keys come from the
 * caller ({@link DataKeyRing} in `data-key.ts`).
 */

/** Which part of a job an envelope holds; bound into its authentication. */
export type SealedField = 'payload' | 'result' | 'progress' | 'failure' | 'log';

/** Where an envelope belongs. */
export interface SealContext {
  jobType: string;
  jobId: string;
  /** The producer that enqueued the job (BullMQ's job name). */
  owner: string;
  field: SealedField;
}

/** One version of the data key, ready for AES-256-GCM. */
export interface DataKey {
  version: string;
  /** 32 bytes. */
  key: Uint8Array;
}

/** How BullMQ's JSON fields (`data`, `returnvalue`, `progress`) hold an envelope. */
export interface SealedValue {
  $sealed: string;
}

const VERSION = /^[A-Za-z0-9._-]{1,64}$/;
const ENVELOPE = /^fleet:v1:([A-Za-z0-9._-]{1,64}):([A-Za-z0-9_-]{38,})$/;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** Secret values shorter than this cannot carry a 256-bit key. */
export const MIN_DATA_KEY_BYTES = 32;

/**
 * The AES key of one data key version, derived (HKDF-SHA256) from the secret's stored value: the
 * stores keep text (64 hex characters from `fleet vault setup`, a `random` rotator's encoding), and
 * any value of at least 32 bytes of it yields a uniform 256-bit key.
 */
export function deriveDataKey(version: string, secretValue: Uint8Array): DataKey {
  if (!VERSION.test(version))
    throw new Error(`data key version ${JSON.stringify(version)} cannot be named in an envelope`);
  if (secretValue.byteLength < MIN_DATA_KEY_BYTES)
    throw new Error(
      `the data key's value is ${secretValue.byteLength} bytes; at least ${MIN_DATA_KEY_BYTES} are needed. Fix: rotate it with a random rotator of bytes ≥ 32.`,
    );
  const key = new Uint8Array(hkdfSync('sha256', secretValue, new Uint8Array(0), 'fleet job data at rest v1', 32));
  return { version, key };
}

function aad(ctx: SealContext, version: string): Buffer {
  return Buffer.from(JSON.stringify(['fleet-job-data/v1', ctx.jobType, ctx.jobId, ctx.owner, ctx.field, version]));
}

/**
 * Random nonces, drawn from the CSPRNG 1024 at a time (one call per job cost as much as the
 * encryption itself). Each is used once; a drained pool is replaced, never overwritten.
 */
let ivPool = Buffer.alloc(0);
let ivAt = 0;
function nextIv(): Buffer {
  if (ivAt + IV_BYTES > ivPool.length) {
    ivPool = randomBytes(IV_BYTES * 1024);
    ivAt = 0;
  }
  const iv = ivPool.subarray(ivAt, ivAt + IV_BYTES);
  ivAt += IV_BYTES;
  return iv;
}

/** Seals text into an envelope. */
export function sealText(key: DataKey, ctx: SealContext, plaintext: string): string {
  const iv = nextIv();
  const cipher = createCipheriv('aes-256-gcm', key.key, iv);
  cipher.setAAD(aad(ctx, key.version));
  const ct = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
  return `fleet:v1:${key.version}:${Buffer.concat([iv, ct, cipher.getAuthTag()]).toString('base64url')}`;
}

/** The key version an envelope names, or `null` when the text is no envelope. */
export function envelopeVersion(envelope: string): string | null {
  return ENVELOPE.exec(envelope)?.[1] ?? null;
}

function where(ctx: SealContext): string {
  return `the ${ctx.field} of job ${ctx.jobId}`;
}

/**
 * Opens an envelope with the key of the version it names. Text that is no envelope throws
 * `JOB_DATA_NOT_SEALED`; one that fails authentication (edited, or moved from elsewhere) throws
 * `JOB_DATA_TAMPERED`.
 */
export function openText(key: DataKey, ctx: SealContext, envelope: string): string {
  const m = ENVELOPE.exec(envelope);
  const body = m?.[2];
  if (!m || body === undefined) throw notSealed(ctx);
  if (m[1] !== key.version)
    throw new Error(`envelope names data key version ${m[1]}, but version ${key.version} was given`);
  const raw = Buffer.from(body, 'base64url');
  try {
    if (raw.length < IV_BYTES + TAG_BYTES) throw new Error('envelope too short');
    const decipher = createDecipheriv('aes-256-gcm', key.key, raw.subarray(0, IV_BYTES));
    decipher.setAAD(aad(ctx, key.version));
    decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES));
    return Buffer.concat([decipher.update(raw.subarray(IV_BYTES, raw.length - TAG_BYTES)), decipher.final()]).toString(
      'utf8',
    );
  } catch (err) {
    throw new DataTamperedError(
      `${where(ctx)} (type ${ctx.jobType}) failed its authentication: the sealed data in Redis was altered, or copied from another job, type, owner or field. Fix: investigate who wrote to Redis; enqueue the job again.`,
      { cause: err },
    );
  }
}

export function notSealed(ctx: SealContext): DataNotSealedError {
  return new DataNotSealedError(
    `${where(ctx)} is not sealed, but type "${ctx.jobType}" encrypts its data at rest (encryptData): it was written around the fleet's producers (a BullMQ client, another language). Fix: enqueue jobs of this type through the HTTP API (POST /v1/jobs/${ctx.jobType}) or the TypeScript producer.`,
  );
}

/** A JSON value (BullMQ's `data`, `returnvalue`, `progress`) as it is stored: an object holding the envelope. */
export function sealValue(key: DataKey, ctx: SealContext, value: unknown): SealedValue {
  return { $sealed: sealText(key, ctx, JSON.stringify(value ?? null)) };
}

/** The envelope of a stored JSON value, or `null` when the value is no sealed value. */
export function sealedEnvelope(stored: unknown): string | null {
  if (typeof stored !== 'object' || stored === null || Array.isArray(stored)) return null;
  const keys = Object.keys(stored);
  const env: unknown = keys.length === 1 && keys[0] === '$sealed' ? Reflect.get(stored, '$sealed') : undefined;
  return typeof env === 'string' && ENVELOPE.test(env) ? env : null;
}

/** Opens a stored JSON value sealed by {@link sealValue}. */
export function openValue(key: DataKey, ctx: SealContext, stored: unknown): unknown {
  const env = sealedEnvelope(stored);
  if (env === null) throw notSealed(ctx);
  const text = openText(key, ctx, env);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new DataTamperedError(`${where(ctx)} opened to text that is not JSON`, { cause: err });
  }
}
