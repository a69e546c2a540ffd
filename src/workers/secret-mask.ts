/**
 * Masks secret values in text the way CI systems do: the raw value and its common encodings
 * (base64 with and without padding, base64url, hex, URL-encoding, JSON-escaping) become `***`.
 * Values shorter than {@link MIN_MASK_LENGTH} characters are not masked: they would shred
 * ordinary output.
 */
export const MIN_MASK_LENGTH = 4;
export const MASK = '***';

export function encodings(bytes: Uint8Array): string[] {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Set<string>();
  const text = b.toString('utf8');
  const b64 = b.toString('base64');
  for (const v of [
    text,
    JSON.stringify(text).slice(1, -1),
    encodeURIComponent(text),
    encodeURIComponent(text).replace(/%20/g, '+'),
    escape(text),
    b64,
    b64.replace(/=+$/, ''),
    b.toString('base64url'),
    b.toString('hex'),
    b.toString('hex').toUpperCase(),
  ]) {
    if (v.length >= MIN_MASK_LENGTH) out.add(v);
  }
  return [...out];
}

export class SecretMask {
  #variants: string[] = [];

  add(bytes: Uint8Array): void {
    // Longest first, so a value inside a longer encoding is not half-masked.
    this.#variants = [...new Set([...this.#variants, ...encodings(bytes)])].sort((a, b) => b.length - a.length);
  }

  get empty(): boolean {
    return this.#variants.length === 0;
  }

  text(s: string): string {
    let out = s;
    for (const v of this.#variants) if (out.includes(v)) out = out.split(v).join(MASK);
    return out;
  }

  /** Masks any JSON-able value (by its JSON text); returns it unchanged when nothing is masked. */
  value<T>(v: T): T {
    if (this.empty || v === undefined) return v;
    let json: string;
    try {
      json = JSON.stringify(v);
    } catch {
      return this.text(String(v)) as T;
    }
    if (json === undefined) return v;
    const masked = this.text(json);
    if (masked === json) return v;
    try {
      return JSON.parse(masked) as T;
    } catch {
      // A value spanning JSON punctuation: fall back to the masked text itself.
      return masked as T;
    }
  }
}
