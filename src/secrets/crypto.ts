import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { SecretUnavailableError } from '../errors.js';

/**
 * `text`'s UTF-8 bytes in memory of their own (not Node's shared pool), so they can be zeroed or
 * transferred; the pooled copy is zeroed at once.
 */
export function utf8Bytes(text: string): Uint8Array {
  const bytes = Buffer.from(text, 'utf8');
  const out = new Uint8Array(bytes.length);
  out.set(bytes);
  bytes.fill(0);
  return out;
}

/** AES-256-GCM ciphertext with its nonce and tag, base64-encoded for storage. */
export interface SealedBox {
  iv: string;
  tag: string;
  ct: string;
}

/**
 * Encrypts with AES-256-GCM. `aad` binds the ciphertext to where it belongs (secret name and
 * version): a box moved to another name or version fails to open.
 */
export function seal(key: Uint8Array, plaintext: Uint8Array, aad: string): SealedBox {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad));
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return { iv: iv.toString('base64'), tag: cipher.getAuthTag().toString('base64'), ct: ct.toString('base64') };
}

/**
 * Decrypts a {@link SealedBox} into a fresh, unpooled buffer the caller must zero. A tampered box,
 * a wrong key or a wrong `aad` throws `SECRET_INTEGRITY` naming `what`.
 */
export function unseal(key: Uint8Array, box: SealedBox, aad: string, what: string): Uint8Array {
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(box.iv, 'base64'));
    decipher.setAAD(Buffer.from(aad));
    decipher.setAuthTag(Buffer.from(box.tag, 'base64'));
    const a = decipher.update(Buffer.from(box.ct, 'base64'));
    const b = decipher.final();
    // Copy into memory of our own (not Node's shared pool), so it can be zeroed or transferred.
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    a.fill(0);
    b.fill(0);
    return out;
  } catch (err) {
    throw new SecretUnavailableError(
      'SECRET_INTEGRITY',
      `${what} failed its integrity check (tampered ciphertext, wrong key or wrong binding). Fix: re-set the secret; investigate who changed the store.`,
      { cause: err },
    );
  }
}
