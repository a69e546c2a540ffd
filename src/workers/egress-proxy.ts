/**
 * The egress proxy of one process sandbox, run by the supervisor outside the sandbox. Inside the
 * OS layer the sandbox has no network but this proxy's Unix socket; every connection it wants goes
 * through here as an HTTP `CONNECT host:port` (HTTPS) or an absolute-form request (plain HTTP) and
 * is checked against the job type's egress policy, after DNS resolution, so a name that resolves
 * to loopback, link-local (cloud metadata), a private range or the fleet's own services is refused
 * unless that address is listed. Refusals are reported (audit, metrics) and answered 403.
 *
 * Every request passes through {@link EgressProxy.#forward}, which is where a later step can
 * swap per-job secret placeholders for real values on the way out.
 */
import { lookup } from 'node:dns/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { BlockList, isIP, connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Egress } from './sandbox-boundary.js';

export interface EgressRefusal {
  destination: string;
  reason: string;
}

export interface EgressProxyOptions {
  egress: Egress;
  /** Addresses of the fleet's own services (Redis, Vault, KMS) that no sandbox may reach unless listed. */
  fleetAddresses?: readonly string[];
  onRefused: (refusal: EgressRefusal) => void;
  /** Upstream connect timeout. @defaultValue 10000 */
  connectTimeoutMs?: number;
}

/** Loopback, link-local (169.254/16: cloud metadata), private, CGNAT, multicast and unspecified. */
const NON_PUBLIC = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.168.0.0', 16], ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) NON_PUBLIC.addSubnet(net, bits, 'ipv4');
for (const [net, bits] of [['::', 128], ['::1', 128], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8], ['::ffff:0:0', 96]] as const) NON_PUBLIC.addSubnet(net, bits, 'ipv6');

function family(ip: string): 'ipv4' | 'ipv6' {
  return isIP(ip) === 6 ? 'ipv6' : 'ipv4';
}

/** `host:port` split, with IPv6 brackets removed. */
export function splitHostPort(target: string, defaultPort: number): { host: string; port: number } | null {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(target) ?? /^([^:]+)(?::(\d+))?$/.exec(target);
  if (!m) return null;
  const port = m[2] ? Number(m[2]) : defaultPort;
  if (!Number.isInteger(port) || port < 1 || port > 65535) return null;
  return { host: m[1]!.toLowerCase().replace(/\.$/, ''), port };
}

/** Whether `host:port` matches one policy entry (`host`, `host:port`, `*.domain`, `*.domain:port`; port defaults to 443). */
export function matchesEgress(pattern: string, host: string, port: number): boolean {
  const p = splitHostPort(pattern.toLowerCase(), 443);
  if (!p || p.port !== port) return false;
  if (p.host.startsWith('*.')) return host.endsWith(p.host.slice(1)) && host.length > p.host.length - 1;
  return host === p.host;
}

export class EgressProxy {
  readonly #o: EgressProxyOptions;
  readonly #server: http.Server;
  readonly #sockets = new Set<Socket | Duplex>();
  readonly #fleet: Set<string>;
  /** Counted for tests and `fleet status`: connections allowed and refused. */
  readonly stats = { allowed: 0, refused: 0 };

  constructor(options: EgressProxyOptions) {
    this.#o = options;
    this.#fleet = new Set(options.fleetAddresses ?? []);
    this.#server = http.createServer((req, res) => void this.#onRequest(req, res));
    this.#server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.#onConnect(req, socket, head));
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
  }

  /** Listens on a Unix socket path (OS layer) or a loopback TCP port (`0` picks one). */
  listen(target: string | 0): Promise<string> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      const done = (): void => {
        const a = this.#server.address();
        resolve(typeof a === 'string' ? a : `http://127.0.0.1:${a?.port}`);
      };
      if (typeof target === 'string') this.#server.listen(target, done);
      else this.#server.listen(0, '127.0.0.1', done);
    });
  }

  /**
   * Decides one destination: the policy by name first, then every address the name resolves to
   * (a listed name that resolves to a private or fleet address is still refused, unless the
   * address itself is listed). Resolves to the address to connect to.
   */
  async #decide(host: string, port: number): Promise<{ ok: true; address: string } | { ok: false; reason: string }> {
    const egress = this.#o.egress;
    if (egress === 'none') return { ok: false, reason: 'egress is "none" for this job type' };
    if (egress !== 'any' && !egress.some((p) => matchesEgress(p, host, port))) return { ok: false, reason: `not in the egress list (${egress.join(', ')})` };
    let addresses: string[];
    try {
      addresses = isIP(host) ? [host] : (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);
    } catch (err) {
      return { ok: false, reason: `DNS lookup failed (${(err as NodeJS.ErrnoException).code ?? 'error'})` };
    }
    const listedByAddress = (a: string): boolean => egress !== 'any' && egress.some((p) => matchesEgress(p, a, port));
    for (const a of addresses) {
      if (this.#fleet.has(a) && !listedByAddress(a)) return { ok: false, reason: `${a} is one of the fleet's own services` };
      if (NON_PUBLIC.check(a, family(a)) && !listedByAddress(a)) return { ok: false, reason: `${host} resolves to ${a}, a loopback, link-local or private address` };
    }
    return { ok: true, address: addresses[0]! };
  }

  #refuse(destination: string, reason: string): void {
    this.stats.refused += 1;
    this.#o.onRefused({ destination, reason });
  }

  async #onConnect(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => socket.destroy());
    const target = splitHostPort(req.url ?? '', 443);
    if (!target) {
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      return;
    }
    const dest = `${target.host}:${target.port}`;
    const verdict = await this.#decide(target.host, target.port);
    if (!verdict.ok) {
      this.#refuse(dest, verdict.reason);
      socket.end(`HTTP/1.1 403 Forbidden\r\nConnection: close\r\nX-Fleet-Egress: refused\r\nContent-Type: text/plain\r\n\r\nfleet egress proxy refused ${dest}: ${verdict.reason}\n`);
      return;
    }
    this.stats.allowed += 1;
    const upstream = connect({ host: verdict.address, port: target.port, timeout: this.#o.connectTimeoutMs ?? 10_000 });
    this.#sockets.add(upstream);
    upstream.on('close', () => this.#sockets.delete(upstream));
    upstream.once('connect', () => {
      upstream.setTimeout(0);
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    const fail = (): void => {
      socket.end('HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n');
      upstream.destroy();
    };
    upstream.once('timeout', fail);
    upstream.on('error', fail);
    socket.on('close', () => upstream.destroy());
  }

  /** Plain HTTP through the proxy: `GET http://host/path`. */
  async #onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '');
      if (url.protocol !== 'http:') throw new Error('not http');
    } catch {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('fleet egress proxy: send absolute http:// URLs, or CONNECT for https\n');
      return;
    }
    const port = Number(url.port || 80);
    const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase();
    const dest = `${host}:${port}`;
    const verdict = await this.#decide(host, port);
    if (!verdict.ok) {
      this.#refuse(dest, verdict.reason);
      res.writeHead(403, { 'content-type': 'text/plain', 'x-fleet-egress': 'refused' }).end(`fleet egress proxy refused ${dest}: ${verdict.reason}\n`);
      return;
    }
    this.stats.allowed += 1;
    this.#forward(req, res, verdict.address, port, url);
  }

  #forward(req: IncomingMessage, res: ServerResponse, address: string, port: number, url: URL): void {
    const headers = { ...req.headers };
    delete headers['proxy-connection'];
    delete headers['proxy-authorization'];
    const upstream = http.request({ host: address, port, method: req.method, path: `${url.pathname}${url.search}`, headers, setHost: false, timeout: this.#o.connectTimeoutMs ?? 10_000 }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end();
    });
    req.pipe(upstream);
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
