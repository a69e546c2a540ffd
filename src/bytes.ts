/**
 * Copies of bytes in memory of their own: neither a slice of Node's shared Buffer pool nor a view
 * of a larger buffer. A secret value held so can be zeroed without touching other data, and
 * transferred to another thread whole; the copies a value passed through on its way are zeroed.
 */

/** The bytes of `parts`, one after another, in a fresh buffer of their own. */
export function copyBytes(...parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** {@link copyBytes}, then every part zero-filled: the copy is the only one left. */
export function moveBytes(...parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = copyBytes(...parts);
  for (const p of parts) p.fill(0);
  return out;
}

/** The UTF-8 bytes of `text` in a buffer of their own. A JS string cannot be zeroed; these bytes can. */
export function utf8Bytes(text: string): Uint8Array<ArrayBuffer> {
  return moveBytes(Buffer.from(text, 'utf8'));
}
