/**
 * What the egress proxy does to the HTTP messages it passes between a sandbox and an upstream:
 * the headers it drops, masking values in responses (across chunk boundaries and in header names),
 * reading a request's target, refusing a request inside a tunnel that names another host, and
 * passing an upstream's answer on without ever throwing. An upstream a sandbox may reach is as
 * untrusted as the sandbox. Pure but for `answer`, which writes the response.
 */
import type http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import { splitHostPort } from '../config/hosts.js';

export const HOP_BY_HOP = [
  'connection',
  'proxy-connection',
  'keep-alive',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
];

/** Every occurrence of `needle` in `buf` replaced by `by`. */
export function replaceBytes(buf: Buffer, needle: Uint8Array, by: Uint8Array): Buffer<ArrayBufferLike> {
  if (!needle.length) return buf;
  let at = buf.indexOf(needle);
  if (at < 0) return buf;
  const parts: Buffer[] = [];
  let from = 0;
  while (at >= 0) {
    parts.push(buf.subarray(from, at), Buffer.from(by));
    from = at + needle.length;
    at = buf.indexOf(needle, from);
  }
  parts.push(buf.subarray(from));
  return Buffer.concat(parts);
}

/**
 * Replaces each value with its placeholder in a stream, across chunk boundaries: the last
 * (longest value − 1) bytes wait for the next chunk, so a value split in two is still found.
 */
export class ValueMasker extends Transform {
  #carry = Buffer.alloc(0);
  readonly #pairs: { value: Uint8Array; by: Uint8Array }[];
  readonly #keep: number;
  constructor(pairs: { value: Uint8Array; by: Uint8Array }[]) {
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
export function maskText(text: string, pairs: { value: Uint8Array; by: Uint8Array }[]): string {
  let out: Buffer<ArrayBufferLike> = Buffer.from(text, 'latin1');
  for (const p of pairs) out = replaceBytes(out, p.value, p.by);
  return out.toString('latin1');
}

export function clipText(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/**
 * Passes an upstream response on to the sandbox, or a 502 when it cannot be: a status Node would
 * refuse to write (`HTTP/1.1 099`), headers it would refuse, or what `prepare` refuses. An upstream
 * the sandbox may reach is as untrusted as the sandbox: nothing it answers may throw here.
 */
export function answer(
  res: ServerResponse,
  up: IncomingMessage,
  destination: string,
  prepare: () =>
    | { headers: http.OutgoingHttpHeaders | http.IncomingHttpHeaders; body?: Transform }
    | { status: number; text: string },
): void {
  const fail = (text: string): void => {
    up.destroy();
    if (res.headersSent) res.destroy();
    else res.writeHead(502, { 'content-type': 'text/plain', 'x-fleet-egress': 'upstream-error' }).end(text);
  };
  const status = up.statusCode ?? 0;
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    fail(`fleet egress proxy: ${destination} answered with status ${status}, which is not passed on\n`);
    return;
  }
  try {
    const ready = prepare();
    if ('status' in ready) {
      fail(ready.text);
      return;
    }
    res.writeHead(status, ready.headers);
    if (ready.body) up.pipe(ready.body).pipe(res);
    else up.pipe(res);
  } catch (err) {
    fail(
      `fleet egress proxy: ${destination} answered with what cannot be passed on (${err instanceof Error ? err.message.slice(0, 200) : 'error'})\n`,
    );
  }
}

/** The path of a request, from origin form (`/p?q`) or absolute form (`https://host/p?q`). */
export function requestPath(req: IncomingMessage): string {
  const url = req.url ?? '/';
  if (url.startsWith('/')) return url;
  try {
    const u = new URL(url);
    return `${u.pathname}${u.search}`;
  } catch {
    return '/';
  }
}

/**
 * Why a request that arrived inside a tunnel names another destination than the tunnel's (its
 * `Host` header or an absolute-form URL), or null when it names the tunnel's own.
 */
export function namesOtherHost(req: IncomingMessage, t: { host: string; port: number }): string | null {
  const tunnel = `${t.host}:${t.port}`;
  const url = req.url ?? '/';
  if (!url.startsWith('/')) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      return `a request target that is neither a path nor a URL, inside a tunnel to ${tunnel}`;
    }
    const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
    const host = u.hostname.replace(/^\[|\]$/g, '').toLowerCase();
    if (host !== t.host || port !== t.port)
      return `a request for ${host.slice(0, 100)}:${port} inside a tunnel to ${tunnel} (a possible exfiltration)`;
  }
  const h = req.headers.host;
  if (h !== undefined) {
    const named = splitHostPort(h, t.port);
    if (!named || named.host !== t.host || named.port !== t.port)
      return `Host: ${h.slice(0, 100)} inside a tunnel to ${tunnel} (a possible exfiltration)`;
  }
  return null;
}
