/**
 * The listening half of a sandbox's egress proxy. Every connection the sandbox wants arrives here as
 * an HTTP `CONNECT host:port` (HTTPS) or an absolute-form request (plain HTTP) and is checked
 * against the job type's egress policy after DNS resolution, so a name that resolves to loopback,
 * link-local (cloud metadata), a private range or the fleet's own services is refused unless that
 * address is listed. Refusals are reported and answered 403; connections past the cap are dropped.
 * An allowed CONNECT is piped raw to its target, or handed to `terminate` (secret injection).
 */
import { lookup } from 'node:dns/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { splitHostPort } from '../config/hosts.js';
import { errnoCode } from '../errors.js';
import { clipText, containedBy, forwardPlain, type EgressTarget, type OnEgressError } from './egress-http.js';
import { allowedAddresses, allowedByName, type EgressVerdict } from './egress-policy.js';
import type { Egress } from './sandbox-boundary.js';

export interface EgressRefusal {
  destination: string;
  reason: string;
}

export interface EgressTunnelOptions {
  egress: Egress;
  /** Addresses of the fleet's own services (Redis, Vault, KMS) that no sandbox may reach unless listed. */
  fleetAddresses?: readonly string[] | undefined;
  onRefused: (refusal: EgressRefusal) => void;
  onError?: OnEgressError | undefined;
  /** Upstream connect timeout. */
  connectTimeoutMs: number;
  /** Connections from the sandbox open at once; more are dropped. */
  maxConnections: number;
  /** Counted here: connections allowed, refused and dropped. */
  stats: { allowed: number; refused: number; dropped: number };
  /** Takes over an allowed CONNECT (injection terminates its TLS); without it the bytes are piped raw. */
  terminate?: ((socket: Duplex, head: Buffer, target: EgressTarget) => Promise<void>) | undefined;
  /** Sees an allowed plain-HTTP request before it is forwarded; true when it answered it (a refusal). */
  refusesPlain?: ((req: IncomingMessage, res: ServerResponse, destination: string) => boolean) | undefined;
}

export class EgressTunnel {
  readonly #o: EgressTunnelOptions;
  readonly #server: http.Server;
  readonly #sockets = new Set<Socket>();
  readonly #fleet: Set<string>;
  /** Whether a dropped connection was reported since the last job ended (one report per job). */
  #dropReported = false;

  constructor(options: EgressTunnelOptions) {
    this.#o = options;
    this.#fleet = new Set(options.fleetAddresses ?? []);
    const contain = containedBy(options.onError);
    this.#server = http.createServer((req, res) => {
      this.#onRequest(req, res).catch(contain('plain request', () => req.socket));
    });
    this.#server.maxConnections = options.maxConnections;
    this.#server.on('drop', () => {
      options.stats.dropped += 1;
      if (this.#dropReported) return;
      this.#dropReported = true;
      this.#refuse(
        'egress proxy',
        `more than ${this.#server.maxConnections} connections open at once (maxEgressConnections); further ones are dropped`,
      );
    });
    this.#server.on('clientError', (_err, socket: Duplex) => socket.destroy());
    this.#server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.#onConnect(req, socket, head).catch(contain('CONNECT', () => socket));
    });
    this.#server.on('connection', (s: Socket) => this.#track(s));
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

  /** Job end: the next dropped connection is reported again (raw tunnels carry no values and stay). */
  endJob(): void {
    this.#dropReported = false;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #track(s: Socket): void {
    this.#sockets.add(s);
    s.on('close', () => this.#sockets.delete(s));
  }

  /**
   * Decides one destination: the policy by name first, then every address the name resolves to
   * (a listed name that resolves to a private or fleet address is still refused, unless the
   * address itself is listed). Resolves to the address to connect to.
   */
  async #decide(host: string, port: number): Promise<EgressVerdict> {
    const byName = allowedByName(this.#o.egress, host, port);
    if (!byName.ok) return byName;
    let addresses: string[];
    try {
      addresses = isIP(host) ? [host] : (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);
    } catch (err) {
      return { ok: false, reason: `DNS lookup failed (${errnoCode(err) ?? 'error'})` };
    }
    return allowedAddresses(this.#o.egress, host, port, addresses, this.#fleet);
  }

  #refuse(destination: string, reason: string): void {
    this.#o.stats.refused += 1;
    // The destination is the sandbox's text: a DNS name is at most 253 characters.
    this.#o.onRefused({ destination: clipText(destination, 260), reason: clipText(reason, 500) });
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
      socket.end(
        `HTTP/1.1 403 Forbidden\r\nConnection: close\r\nX-Fleet-Egress: refused\r\nContent-Type: text/plain\r\n\r\nfleet egress proxy refused ${dest}: ${verdict.reason}\n`,
      );
      return;
    }
    this.#o.stats.allowed += 1;
    if (this.#o.terminate) {
      await this.#o.terminate(socket, head, { host: target.host, port: target.port, address: verdict.address });
      return;
    }
    const upstream = connect({ host: verdict.address, port: target.port, timeout: this.#o.connectTimeoutMs });
    this.#track(upstream);
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
      res
        .writeHead(400, { 'content-type': 'text/plain' })
        .end('fleet egress proxy: send absolute http:// URLs, or CONNECT for https\n');
      return;
    }
    const port = Number(url.port || 80);
    const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase();
    const dest = `${host}:${port}`;
    const verdict = await this.#decide(host, port);
    if (!verdict.ok) {
      this.#refuse(dest, verdict.reason);
      res
        .writeHead(403, { 'content-type': 'text/plain', 'x-fleet-egress': 'refused' })
        .end(`fleet egress proxy refused ${dest}: ${verdict.reason}\n`);
      return;
    }
    this.#o.stats.allowed += 1;
    if (this.#o.refusesPlain?.(req, res, dest)) return;
    forwardPlain(req, res, { address: verdict.address, port }, url, this.#o.connectTimeoutMs);
  }
}
