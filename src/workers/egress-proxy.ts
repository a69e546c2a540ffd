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
import https from 'node:https';
import tls from 'node:tls';
import { bindingAllows, PLACEHOLDER, type Injection, type InjectionRegistry } from '../secrets/injection.js';
import type { EgressCa } from './egress-ca.js';
import { isIP, connect, type Socket } from 'node:net';
import { allowedAddresses, allowedByName, type EgressVerdict } from './egress-policy.js';
import { errnoCode } from '../errors.js';
import type { Duplex } from 'node:stream';
import type { Egress } from './sandbox-boundary.js';
import {
  answer,
  clipText,
  HOP_BY_HOP,
  maskText,
  namesOtherHost,
  replaceBytes,
  requestPath,
  ValueMasker,
} from './egress-http.js';
import { splitHostPort } from '../config/hosts.js';

export interface EgressRefusal {
  destination: string;
  reason: string;
}

/** A request the proxy would not send because of a secret placeholder in it. */
export interface InjectionRefusal {
  jobId: string | null;
  /** Filled in by the sandbox host (the proxy serves one type). */
  jobType?: string;
  /** The secret the placeholder stands for, when known. */
  secret: string | null;
  destination: string;
  reason: string;
}

/** Secret injection: set for sandboxes of types that take a secret as `inject`. */
export interface InjectOptions {
  ca: EgressCa;
  registry: InjectionRegistry;
  /** The job the sandbox runs now. */
  currentJob: () => string | null;
  /** Extra CA certificates (PEM) trusted upstream, besides Node's bundled roots. */
  upstreamCa?: string;
  maxBodyBytes: number;
  onInjected: (e: { injection: Injection; destination: string }) => void;
  onRefused: (e: InjectionRefusal) => void;
}

export interface EgressProxyOptions {
  egress: Egress;
  inject?: InjectOptions;
  /** Addresses of the fleet's own services (Redis, Vault, KMS) that no sandbox may reach unless listed. */
  fleetAddresses?: readonly string[];
  onRefused: (refusal: EgressRefusal) => void;
  /** A handler failed on what the sandbox sent (its connection was closed); for logs. */
  onError?: (what: string, err: unknown) => void;
  /** Upstream connect timeout. @defaultValue 10000 */
  connectTimeoutMs?: number;
  /** Connections from the sandbox open at once; more are dropped (descriptors it can make the supervisor hold). @defaultValue 64 */
  maxConnections?: number;
  /** Request bytes held at once while looking for placeholders (injection). @defaultValue 2 × inject.maxBodyBytes */
  maxBufferedBytes?: number;
}

/** Connections a sandbox may hold open through its proxy at once, unless configured. */
export const DEFAULT_MAX_EGRESS_CONNECTIONS = 64;

export { matchesEgress, splitHostPort } from '../config/hosts.js';
export { ValueMasker, namesOtherHost } from './egress-http.js';

export class EgressProxy {
  readonly #o: EgressProxyOptions;
  readonly #server: http.Server;
  /** Parses the requests of TLS connections the proxy terminated (injection). */
  readonly #inner: http.Server | null = null;
  readonly #plainInner: http.Server | null = null;
  readonly #targets = new WeakMap<object, { host: string; port: number; address: string }>();
  readonly #agent: https.Agent | null = null;
  readonly #sockets = new Set<Socket | Duplex>();
  readonly #fleet: Set<string>;
  /** Exchanges on terminated connections whose response has not ended (cut at job end). */
  readonly #inFlight = new Set<{ socket: Duplex; upstream: http.ClientRequest | null }>();
  /** Request bytes held now for placeholder checks, against `maxBufferedBytes`. */
  #buffered = 0;
  readonly #maxBuffered: number;
  /** Whether a dropped connection was reported since the last job ended (one report per job). */
  #dropReported = false;
  /** Counted for tests and `fleet status`: connections allowed, refused and dropped, requests refused for a placeholder. */
  readonly stats = { allowed: 0, refused: 0, dropped: 0, injectionsRefused: 0 };

  constructor(options: EgressProxyOptions) {
    this.#o = options;
    this.#fleet = new Set(options.fleetAddresses ?? []);
    this.#maxBuffered = options.maxBufferedBytes ?? 2 * (options.inject?.maxBodyBytes ?? 0);
    // Every handler is contained: whatever a sandbox sends (an aborted upload, a reset mid-TLS)
    // ends that connection, never the supervisor.
    const contain =
      (what: string, socket: () => Duplex | undefined) =>
      (err: unknown): void => {
        socket()?.destroy();
        this.#o.onError?.(what, err);
      };
    this.#server = http.createServer((req, res) => {
      this.#onRequest(req, res).catch(contain('plain request', () => req.socket));
    });
    this.#server.maxConnections = options.maxConnections ?? DEFAULT_MAX_EGRESS_CONNECTIONS;
    this.#server.on('drop', () => {
      this.stats.dropped += 1;
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
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
    if (options.inject) {
      this.#inner = http.createServer((req, res) => {
        this.#onInjectable(req, res).catch(contain('terminated request', () => req.socket));
      });
      this.#inner.on('clientError', (_err, socket: Duplex) => socket.destroy());
      this.#plainInner = http.createServer((req, res) => {
        try {
          this.#onTunneledPlain(req, res);
        } catch (err) {
          contain('tunneled request', () => req.socket)(err);
        }
      });
      this.#plainInner.on('clientError', (_err, socket: Duplex) => socket.destroy());
      // Verification set here, not left to NODE_TLS_REJECT_UNAUTHORIZED: injected secrets go upstream.
      this.#agent = new https.Agent({
        keepAlive: true,
        rejectUnauthorized: true,
        ...(options.inject.upstreamCa ? { ca: [...tls.rootCertificates, options.inject.upstreamCa] } : {}),
      });
    }
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
    this.stats.refused += 1;
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
    this.stats.allowed += 1;
    if (this.#inner && this.#o.inject) {
      // Injection: terminate the sandbox's TLS with a certificate of the fleet CA for this host,
      // read its HTTP requests, and send each on over a TLS connection of our own.
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) socket.unshift(head);
      // Some clients tunnel plain HTTP through CONNECT too (Node 22's fetch): a first byte that
      // does not open a TLS handshake is plain HTTP, checked like an absolute-form request.
      const first = await new Promise<Buffer | null>((resolve) => {
        socket.once('data', (chunk: Buffer) => {
          socket.pause();
          socket.unshift(chunk);
          resolve(chunk);
        });
        socket.once('close', () => resolve(null));
      });
      if (!first) return;
      if (first[0] !== 0x16 && this.#plainInner) {
        this.#targets.set(socket, { host: target.host, port: target.port, address: verdict.address });
        this.#plainInner.emit('connection', socket);
        socket.resume();
        return;
      }
      let context: tls.SecureContext;
      try {
        context = await this.#o.inject.ca.contextFor(target.host);
      } catch {
        socket.destroy();
        return;
      }
      const tlsSocket = new tls.TLSSocket(socket, {
        isServer: true,
        secureContext: context,
        ALPNProtocols: ['http/1.1'],
      });
      tlsSocket.on('error', () => tlsSocket.destroy());
      this.#sockets.add(tlsSocket);
      tlsSocket.on('close', () => this.#sockets.delete(tlsSocket));
      this.#targets.set(tlsSocket, { host: target.host, port: target.port, address: verdict.address });
      this.#inner.emit('connection', tlsSocket);
      return;
    }
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
    this.stats.allowed += 1;
    if (this.#placeholderInPlainHttp(req, res, dest)) return;
    this.#forward(req, res, verdict.address, port, url);
  }

  /** Injected secrets travel only over TLS: a placeholder in a plain-HTTP request is refused (true). */
  #placeholderInPlainHttp(req: IncomingMessage, res: ServerResponse, dest: string): boolean {
    if (!this.#o.inject) return false;
    const [found] = [...`${req.url ?? ''}\n${JSON.stringify(req.headers)}`.matchAll(PLACEHOLDER)].map((m) => m[0]);
    if (found === undefined) return false;
    const s = this.#o.inject.registry.lookup(found);
    this.#refuseInjection(res, {
      jobId: this.#o.inject.currentJob(),
      secret: s.state === 'active' ? s.injection.secret : s.state === 'retired' ? s.secret : null,
      destination: dest,
      reason: 'a secret placeholder in a plain-HTTP request: injected secrets are sent only over https',
    });
    return true;
  }

  /** Plain HTTP that arrived through CONNECT (origin-form requests). */
  #onTunneledPlain(req: IncomingMessage, res: ServerResponse): void {
    const t = this.#targets.get(req.socket);
    if (!t) {
      res.writeHead(502).end();
      return;
    }
    const dest = `${t.host}:${t.port}`;
    const other = namesOtherHost(req, t);
    if (other) {
      this.#refuseInjection(res, {
        jobId: this.#o.inject?.currentJob() ?? null,
        secret: null,
        destination: dest,
        reason: other,
      });
      return;
    }
    if (this.#placeholderInPlainHttp(req, res, dest)) return;
    this.#forward(req, res, t.address, t.port, new URL(requestPath(req), `http://${dest}`));
  }

  /**
   * Job end (the sandbox host calls it, before the job's values are zeroed): every exchange of a
   * terminated (injecting) connection still in flight is cut, upstream and toward the sandbox, and
   * the upstream connections are closed, so no response for the ended job reaches the sandbox
   * (where its values, zeroed, could no longer mask it). Idle connections from the sandbox stay
   * open for its next job; raw tunnels (types without injected secrets) carry no values and stay.
   */
  endJob(): void {
    this.#dropReported = false;
    for (const x of this.#inFlight) {
      x.upstream?.destroy();
      x.socket.destroy();
    }
    this.#inFlight.clear();
    this.#agent?.destroy();
  }

  #refuseInjection(res: ServerResponse, refusal: InjectionRefusal): void {
    this.stats.injectionsRefused += 1;
    this.#o.inject?.onRefused({
      ...refusal,
      destination: clipText(refusal.destination, 260),
      reason: clipText(refusal.reason, 500),
    });
    res
      .writeHead(403, { 'content-type': 'text/plain', 'x-fleet-egress': 'refused' })
      .end(`fleet egress proxy refused to send a secret placeholder to ${refusal.destination}: ${refusal.reason}\n`);
  }

  /**
   * One request on a terminated TLS connection: every placeholder in it must belong to the
   * sandbox's current job, sit where its secret's binding allows (host, header in its format,
   * body if allowed) and nowhere else; then each is swapped for its value, and the response is
   * sent back with every value of the job replaced by its placeholder.
   */
  async #onInjectable(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const inject = this.#o.inject;
    const agent = this.#agent;
    const t = this.#targets.get(req.socket);
    if (!t || !inject || !agent) {
      res.writeHead(502).end();
      return;
    }
    const destination = `${t.host}:${t.port}`;
    const jobId = inject.currentJob();
    // A request inside the tunnel for another host would carry the value to whatever a shared
    // front end routes that Host to.
    const other = namesOtherHost(req, t);
    if (other) {
      this.#refuseInjection(res, { jobId, secret: null, destination, reason: other });
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const exchange: { socket: Duplex; upstream: http.ClientRequest | null } = { socket: req.socket, upstream: null };
    this.#inFlight.add(exchange);
    // Bytes held for this request count against the sandbox's total until its response ends.
    res.once('close', () => {
      this.#buffered -= size;
      this.#inFlight.delete(exchange);
    });
    for await (const data of req) {
      const c = Buffer.isBuffer(data) ? data : Buffer.from(String(data));
      size += c.length;
      this.#buffered += c.length;
      if (this.#buffered > this.#maxBuffered) {
        res
          .writeHead(503, { 'content-type': 'text/plain', connection: 'close', 'x-fleet-egress': 'refused' })
          .end(
            `fleet egress proxy: this sandbox's requests hold more than ${this.#maxBuffered} bytes at once (maxEgressBufferedBytes); send fewer uploads in parallel\n`,
          );
        req.destroy();
        return;
      }
      if (size > inject.maxBodyBytes) {
        res
          .writeHead(413, { 'content-type': 'text/plain', connection: 'close' })
          .end(
            `fleet egress proxy: request bodies above ${inject.maxBodyBytes} bytes are not sent by a sandbox with injected secrets (supervisor.injectMaxBodyBytes)\n`,
          );
        return;
      }
      chunks.push(c);
    }
    let body: Buffer<ArrayBufferLike> = Buffer.concat(chunks);
    const swaps = new Map<string, Injection>();
    const check = (ph: string, where: { header: string; value: string } | 'body' | 'url'): InjectionRefusal | null => {
      const s = inject.registry.lookup(ph);
      const refusal = (secret: string | null, reason: string): InjectionRefusal => ({
        jobId,
        secret,
        destination,
        reason,
      });
      if (s.state === 'unknown') return refusal(null, 'an unknown secret placeholder');
      if (s.state === 'retired')
        return refusal(s.secret, `the placeholder of job ${s.jobId}, which has ended (a replay)`);
      const inj = s.injection;
      if (inj.jobId !== jobId) return refusal(inj.secret, `the placeholder of another job (${inj.jobId})`);
      if (where === 'url')
        return refusal(inj.secret, 'a secret placeholder in the URL (paths and query strings end up in logs)');
      if (!bindingAllows(inj.binding, t.host, t.port))
        return refusal(inj.secret, `"${inj.secret}" is bound to ${inj.binding.hosts.join(', ')}, not ${destination}`);
      if (where === 'body') {
        if (!inj.binding.body)
          return refusal(
            inj.secret,
            `a placeholder of "${inj.secret}" in the request body, which its binding does not allow (body: true)`,
          );
      } else {
        if (where.header !== inj.binding.header.toLowerCase())
          return refusal(
            inj.secret,
            `a placeholder of "${inj.secret}" in header ${where.header}; it may only be sent in ${inj.binding.header}`,
          );
        if (where.value !== inj.binding.format.replace('{value}', ph))
          return refusal(
            inj.secret,
            `header ${where.header} must be exactly "${inj.binding.format}" with the placeholder as {value}`,
          );
      }
      swaps.set(ph, inj);
      return null;
    };
    const problems: InjectionRefusal[] = [];
    for (const m of (req.url ?? '').matchAll(PLACEHOLDER)) {
      const p = check(m[0], 'url');
      if (p) problems.push(p);
    }
    const headers: http.OutgoingHttpHeaders = {};
    for (const [name, raw] of Object.entries(req.headers)) {
      if (HOP_BY_HOP.includes(name) || raw === undefined) continue;
      for (const value of Array.isArray(raw) ? raw : [raw])
        for (const m of value.matchAll(PLACEHOLDER)) {
          const p = check(m[0], { header: name, value });
          if (p) problems.push(p);
        }
      headers[name] = raw;
    }
    for (const m of body.toString('latin1').matchAll(PLACEHOLDER)) {
      const p = check(m[0], 'body');
      if (p) problems.push(p);
    }
    const [refused] = problems;
    if (refused) {
      this.#refuseInjection(res, refused);
      return;
    }
    for (const [ph, inj] of swaps) {
      const value = Buffer.from(inj.value);
      for (const [name, raw] of Object.entries(headers)) {
        if (typeof raw === 'string' && raw.includes(ph)) headers[name] = raw.split(ph).join(value.toString('latin1'));
      }
      body = replaceBytes(body, Buffer.from(ph), value);
      value.fill(0);
      inject.onInjected({ injection: inj, destination });
    }
    if (body.length || req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined)
      headers['content-length'] = body.length;
    // Responses are searched for the values: they must arrive uncompressed, and whole (a Range
    // request would bring back a slice the whole-value mask does not recognise).
    headers['accept-encoding'] = 'identity';
    if (swaps.size) {
      delete headers.range;
      delete headers['if-range'];
    }
    const pairs = inject.registry.valuesOf(jobId).map((i) => ({ value: i.value, by: Buffer.from(i.placeholder) }));
    const upstream = https.request(
      {
        host: t.address,
        port: t.port,
        ...(isIP(t.host) ? {} : { servername: t.host }),
        method: req.method,
        path: requestPath(req),
        headers,
        agent,
        timeout: this.#o.connectTimeoutMs ?? 10_000,
      },
      (up) =>
        answer(res, up, destination, () => {
          // Masking reads the bytes as sent: a body the upstream compressed anyway (it was asked for
          // identity) could carry the value past the mask, so it is not passed on.
          const encoding = String(up.headers['content-encoding'] ?? 'identity').toLowerCase();
          if (encoding !== 'identity') {
            up.destroy();
            return {
              status: 502,
              text: `fleet egress proxy: ${destination} answered with Content-Encoding ${encoding.slice(0, 40)} although asked for identity; a response to a request with injected secrets must be uncompressed to be masked\n`,
            };
          }
          const out: http.OutgoingHttpHeaders = {};
          for (const [name, raw] of Object.entries(up.headers)) {
            if (HOP_BY_HOP.includes(name) || name === 'content-length' || raw === undefined) continue;
            // Names too: a reflected value can sit in a header's name as well as in its value.
            out[maskText(name, pairs)] = Array.isArray(raw) ? raw.map((v) => maskText(v, pairs)) : maskText(raw, pairs);
          }
          return { headers: out, body: new ValueMasker(pairs) };
        }),
    );
    exchange.upstream = upstream;
    if (!this.#inFlight.has(exchange)) upstream.destroy(); // the job ended while the body was read
    upstream.on('timeout', () => upstream.destroy(new Error('upstream timeout')));
    upstream.on('error', (err) => {
      if (res.destroyed) return;
      if (!res.headersSent)
        res
          .writeHead(502, { 'content-type': 'text/plain', 'x-fleet-egress': 'upstream-error' })
          .end(`fleet egress proxy: ${destination}: ${err.message}\n`);
      else res.destroy();
    });
    upstream.end(body);
  }

  #forward(req: IncomingMessage, res: ServerResponse, address: string, port: number, url: URL): void {
    const headers = { ...req.headers };
    delete headers['proxy-connection'];
    delete headers['proxy-authorization'];
    const upstream = http.request(
      {
        host: address,
        port,
        method: req.method,
        path: `${url.pathname}${url.search}`,
        headers,
        setHost: false,
        timeout: this.#o.connectTimeoutMs ?? 10_000,
      },
      (up) => answer(res, up, `${address}:${port}`, () => ({ headers: up.headers })),
    );
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end();
    });
    req.pipe(upstream);
  }

  async close(): Promise<void> {
    this.#agent?.destroy();
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
