/**
 * The response masker of the injecting egress proxy: in what an upstream answers a request of a job
 * with injected secrets, every value of that job is replaced by its placeholder (header names and
 * values, and the body across chunk boundaries) before the sandbox sees it. A body it cannot read
 * as sent (compressed) is not passed on.
 */
import type http from 'node:http';
import type { IncomingMessage } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import { copyBytes } from '../bytes.js';
import type { Injection } from '../secrets/injection.js';
import { HOP_BY_HOP, replaceBytes, type Prepared } from './egress-http.js';

/** A value and the placeholder it is replaced by. */
export interface MaskPair {
  value: Uint8Array;
  by: Uint8Array;
}

/** What to mask in a job's responses: each of its values, by its placeholder. */
export function maskPairs(injections: readonly Injection[]): MaskPair[] {
  return injections.map((i) => ({ value: i.value, by: Buffer.from(i.placeholder) }));
}

/**
 * Replaces each value with its placeholder in a stream, across chunk boundaries: the last
 * (longest value − 1) bytes wait for the next chunk, so a value split in two is still found.
 */
export class ValueMasker extends Transform {
  #carry = Buffer.alloc(0);
  readonly #pairs: MaskPair[];
  readonly #keep: number;
  constructor(pairs: MaskPair[]) {
    super();
    this.#pairs = pairs.filter((p) => p.value.length > 0);
    this.#keep = Math.max(0, ...this.#pairs.map((p) => p.value.length - 1));
  }
  #mask(buf: Buffer): Buffer {
    let out = buf;
    for (const p of this.#pairs) out = replaceBytes(out, p.value, p.by);
    return out;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const all = this.#mask(Buffer.concat([this.#carry, chunk]));
    const cut = Math.max(0, all.length - this.#keep);
    this.#carry = Buffer.from(all.subarray(cut));
    cb(null, all.subarray(0, cut));
  }
  override _flush(cb: TransformCallback): void {
    cb(null, this.#mask(this.#carry));
  }
}

/** A header value with every value replaced by its placeholder. */
export function maskText(text: string, pairs: MaskPair[]): string {
  let out: Buffer<ArrayBufferLike> = Buffer.from(text, 'latin1');
  for (const p of pairs) out = replaceBytes(out, p.value, p.by);
  return out.toString('latin1');
}

/** `bytes` with A–Z turned to a–z, in place. */
function lowerAscii(bytes: Uint8Array): Uint8Array {
  bytes.forEach((b, i) => {
    if (b >= 0x41 && b <= 0x5a) bytes[i] = b + 0x20;
  });
  return bytes;
}

/**
 * An upstream's answer as the sandbox may see it: its headers masked (names too, in any case: a
 * reflected value can sit in a header's name as well as in its value) and its body through a {@link ValueMasker};
 * or a 502 for a body the upstream compressed although asked for identity (it could carry a value
 * past the mask).
 */
export function maskedResponse(up: IncomingMessage, pairs: MaskPair[], destination: string): Prepared {
  const encoding = String(up.headers['content-encoding'] ?? 'identity').toLowerCase();
  if (encoding !== 'identity') {
    up.destroy();
    return {
      status: 502,
      text: `fleet egress proxy: ${destination} answered with Content-Encoding ${encoding.slice(0, 40)} although asked for identity; a response to a request with injected secrets must be uncompressed to be masked\n`,
    };
  }
  // Node hands header names over lowercased, and names are case-insensitive anyway: a name is
  // matched against each value lowercased (those copies are zero-filled once the headers are done).
  const lowered = pairs.map((p) => ({ value: lowerAscii(copyBytes(p.value)), by: p.by }));
  const out: http.OutgoingHttpHeaders = {};
  try {
    for (const [name, raw] of Object.entries(up.headers)) {
      if (HOP_BY_HOP.includes(name) || name === 'content-length' || raw === undefined) continue;
      out[maskText(name, lowered)] = Array.isArray(raw) ? raw.map((v) => maskText(v, pairs)) : maskText(raw, pairs);
    }
  } finally {
    for (const p of lowered) p.value.fill(0);
  }
  return { headers: out, body: new ValueMasker(pairs) };
}
