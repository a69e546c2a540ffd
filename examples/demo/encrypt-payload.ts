import { createCipheriv, randomBytes } from 'node:crypto';
import type { Processor } from 'fleet';

/**
 * Demo: encrypts a payload with AES-256-GCM under a key kept in KMS envelope encryption. The key
 * arrives decrypted, as bytes, at job start and is zeroed when the job ends; only the ciphertext,
 * its nonce and tag leave the sandbox.
 */
const encryptPayload: Processor<{ plaintext: string }> = async (job, ctx) => {
  const key = await ctx.secrets.get('payload-encryption-key');
  // The stored key is base64 of 32 random bytes (vault-init makes it).
  const raw = Buffer.from(key.toString('utf8'), 'base64');
  try {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', raw, iv);
    const ciphertext = Buffer.concat([cipher.update(job.data.plaintext, 'utf8'), cipher.final()]);
    return {
      alg: 'A256GCM',
      iv: iv.toString('base64'),
      tag: cipher.getAuthTag().toString('base64'),
      ciphertext: ciphertext.toString('base64'),
    };
  } finally {
    raw.fill(0);
  }
};
export default encryptPayload;
