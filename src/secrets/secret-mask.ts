/**
 * Masks secret values in text the way CI systems do: the raw value and its common encodings
 * (base64 with and without padding, base64url, hex in either case, Buffer inspect form,
 * URL-encoding, JSON-escaping, and base64 runs that decode to something holding the value, as in
 * `Basic base64(user:secret)`) become `***`. It catches accidents; a hostile processor can encode
 * around any mask (see docs/security.md#threat-model).
 * Values shorter than {@link MIN_MASK_LENGTH} characters are not masked: they would shred
 * ordinary output.
 */
export const MIN_MASK_LENGTH = 4;
export const MASK = '***';

const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** `4d 2d 53`: hex bytes with a space between each (from a table: a third of a regex replace's CPU). */
function spacedHex(b: Uint8Array): string {
  const parts: string[] = [];
  for (const byte of b) parts.push(HEX_BYTE[byte] ?? '');
  return parts.join(' ');
}

/**
 * Runs of base64/base64url text long enough to hide a secret inside (`Basic base64(user:secret)`):
 * at least 8 characters, and at least as many as the shortest value takes (n characters decode to
 * ⌊3n/4⌋ bytes, so a shorter run cannot hold it and is not decoded). One expression per length.
 */
const BASE64_RUNS = new Map<number, RegExp>();
function base64Runs(minChars: number): RegExp {
  const n = Math.max(8, minChars);
  let re = BASE64_RUNS.get(n);
  if (!re) BASE64_RUNS.set(n, (re = new RegExp(`[A-Za-z0-9+/_-]{${n},}={0,2}`, 'g')));
  return re;
}

export function encodings(bytes: Uint8Array): string[] {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Set<string>();
  const text = b.toString('utf8');
  const b64 = b.toString('base64');
  const spaced = spacedHex(b.subarray(0, 50));
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
    // util.inspect of a Buffer: `<Buffer 4d 2d 53 …>`, the first 50 bytes at most.
    spaced,
    spaced.toUpperCase(),
  ]) {
    if (v.length >= MIN_MASK_LENGTH) out.add(v);
  }
  return [...out];
}

export class SecretMask {
  #variants: string[] = [];
  /** The values themselves (views of the job's own buffers, zeroed with them at job end). */
  #values: Uint8Array[] = [];

  /** Base64 characters it takes to hold the shortest value (one detached later only holds fewer bytes). */
  #runChars = Infinity;

  add(bytes: Uint8Array): void {
    if (bytes.byteLength >= MIN_MASK_LENGTH) {
      this.#values.push(bytes);
      this.#runChars = Math.min(this.#runChars, Math.ceil((bytes.byteLength * 4) / 3));
    }
    // Longest first, so a value inside a longer encoding is not half-masked.
    this.#variants = [...new Set([...this.#variants, ...encodings(bytes)])].sort((a, b) => b.length - a.length);
  }

  get empty(): boolean {
    return this.#variants.length === 0 && this.#values.length === 0;
  }

  #holdsSecret(bytes: Uint8Array): boolean {
    const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return this.#values.some((v) => v.byteLength > 0 && b.includes(Buffer.from(v.buffer, v.byteOffset, v.byteLength)));
  }

  text(s: string): string {
    let out = s;
    for (const v of this.#variants) if (out.includes(v)) out = out.split(v).join(MASK);
    if (this.#values.length === 0) return out;
    // A secret inside a longer base64 run (`Authorization: Basic base64(user:secret)`, a JWT
    // segment): the run is decoded and masked whole when it holds a value.
    return out.replace(base64Runs(this.#runChars), (run) => {
      const decoded = Buffer.from(run.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
      return this.#holdsSecret(decoded) ? MASK : run;
    });
  }

  /** Console arguments: a Buffer or typed array holding a value is replaced before it is formatted. */
  args(args: unknown[]): unknown[] {
    if (this.#values.length === 0) return args;
    return args.map((a) =>
      ArrayBuffer.isView(a) && this.#holdsSecret(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)) ? MASK : a,
    );
  }

  /** Masks any JSON-able value (by its JSON text); returns it unchanged when nothing is masked. */
  value(v: unknown): unknown {
    if (this.empty || v === undefined) return v;
    let json: string | undefined;
    try {
      json = JSON.stringify(v);
    } catch {
      return this.text(String(v));
    }
    if (json === undefined) return v;
    const masked = this.text(json);
    if (masked === json) return v;
    try {
      return JSON.parse(masked);
    } catch {
      // A value spanning JSON punctuation: fall back to the masked text itself.
      return masked;
    }
  }

  /** Masks a log line's fields; if masking broke their JSON shape, the masked text is kept under `masked`. */
  fields(f: Record<string, unknown>): Record<string, unknown> {
    const v = this.value(f);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? { ...v } : { masked: v };
  }
}
