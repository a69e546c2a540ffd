/**
 * What the egress proxy does to the HTTP messages it passes between a sandbox and an upstream:
 * the headers it drops, reading a request's target, refusing a request inside a tunnel that names
 * another host, forwarding a plain-HTTP request, and passing an upstream's answer on without ever
 * throwing. An upstream a sandbox may reach is as untrusted as the sandbox. Pure but for
 * `forwardPlain` and `answer`, which write the response, and `containedBy`, which ends a connection.
 */
import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex, Transform } from 'node:stream';
import { splitHostPort } from '../config/hosts.js';

/** Where an allowed connection goes: the name the sandbox asked for, and the address the policy checked for it. */
export interface EgressTarget {
  host: string;
  port: number;
  address: string;
}

/** A handler that failed on what the sandbox sent; for logs. */
export type OnEgressError = (what: string, err: unknown) => void;

/**
 * Contains a handler's failure: whatever a sandbox sends (an aborted upload, a reset mid-TLS) ends
 * that connection, never the supervisor.
 */
export function containedBy(
  onError: OnEgressError | undefined,
): (what: string, socket: () => Duplex | undefined) => (err: unknown) => void {
  return (what, socket) =>
    (err: unknown): void => {
      socket()?.destroy();
      onError?.(what, err);
    };
}

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

export function clipText(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** What is passed on of an upstream's answer (its body through `body` if set), or why it is not. */
export type Prepared =
  { headers: http.OutgoingHttpHeaders | http.IncomingHttpHeaders; body?: Transform } | { status: number; text: string };

/**
 * Passes an upstream response on to the sandbox, or a 502 when it cannot be: a status Node would
 * refuse to write (`HTTP/1.1 099`), headers it would refuse, or what `prepare` refuses. An upstream
 * the sandbox may reach is as untrusted as the sandbox: nothing it answers may throw here.
 */
export function answer(res: ServerResponse, up: IncomingMessage, destination: string, prepare: () => Prepared): void {
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

/**
 * Sends a plain-HTTP request on to the address the policy checked, as the sandbox sent it less the
 * proxy's own headers (its `Host` header kept), and the answer back.
 */
export function forwardPlain(
  req: IncomingMessage,
  res: ServerResponse,
  to: { address: string; port: number },
  url: URL,
  timeoutMs: number,
): void {
  const headers = { ...req.headers };
  delete headers['proxy-connection'];
  delete headers['proxy-authorization'];
  const upstream = http.request(
    {
      host: to.address,
      port: to.port,
      method: req.method,
      path: `${url.pathname}${url.search}`,
      headers,
      setHost: false,
      timeout: timeoutMs,
    },
    (up) => answer(res, up, `${to.address}:${to.port}`, () => ({ headers: up.headers })),
  );
  upstream.on('error', () => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
    res.end();
  });
  req.pipe(upstream);
}
