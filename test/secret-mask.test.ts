import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { SecretMask } from '../src/secrets/secret-mask.js';

const SECRET = 'M-S3cr3t-value-0123456789';

function mask(): SecretMask {
  const m = new SecretMask();
  m.add(new Uint8Array(Buffer.from(SECRET)));
  return m;
}

describe('secret masking', () => {
  it('masks the raw value and its encodings, in either hex case', () => {
    const b = Buffer.from(SECRET);
    const m = mask();
    for (const form of [
      SECRET,
      b.toString('base64'),
      b.toString('base64url'),
      b.toString('hex'),
      b.toString('hex').toUpperCase(),
      encodeURIComponent(SECRET),
    ]) {
      expect(m.text(`before ${form} after`)).toBe('before *** after');
    }
  });

  it("masks a Buffer's inspect form, and Buffers and typed arrays handed to console", () => {
    const m = mask();
    expect(m.text(inspect(Buffer.from(SECRET)))).not.toMatch(/4d 2d 53/i);
    const args = m.args([Buffer.from(`x${SECRET}y`), new Uint8Array(Buffer.from(SECRET)), Buffer.from('harmless')]);
    expect(args.slice(0, 2)).toEqual(['***', '***']);
    expect(Buffer.isBuffer(args[2])).toBe(true);
  });

  it('masks a Basic auth header built from the secret, and other base64 runs holding it', () => {
    const m = mask();
    const basic = Buffer.from(`user:${SECRET}`).toString('base64');
    expect(m.text(`Authorization: Basic ${basic}`)).toBe('Authorization: Basic ***');
    const jwtish = Buffer.from(JSON.stringify({ k: SECRET })).toString('base64url');
    expect(m.text(`token ${jwtish}.sig`)).toBe('token ***.sig');
    // Base64 text that holds no secret is left alone.
    const other = Buffer.from('user:not-the-secret').toString('base64');
    expect(m.text(`Basic ${other}`)).toBe(`Basic ${other}`);
  });
});
