/**
 * The TLS-terminating half of the egress proxy, for sandboxes of types that take a secret as
 * `inject`. An allowed CONNECT is answered here: the sandbox's TLS is terminated with a certificate
 * of the fleet CA for the host it asked for, each HTTP request in it is read, checked
 * ({@link checkRequest}), its placeholders swapped for their values, and sent on over a TLS
 * connection of the proxy's own; the answer comes back masked ({@link maskedResponse}). Plain HTTP
 * tunnelled through CONNECT is forwarded only without a placeholder in it.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Injection, InjectionRegistry } from '../secrets/injection.js';
import type { EgressCa } from './egress-ca.js';
import {
  answer,
  clipText,
  containedBy,
  forwardPlain,
  namesOtherHost,
  requestPath,
  type EgressTarget,
  type OnEgressError,
} from './egress-http.js';
import { checkPlainRequest, checkRequest, injectedRequest } from './egress-injection-check.js';
import { maskedResponse, maskPairs } from './egress-masker.js';

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

export interface EgressInjectorOptions extends InjectOptions {
  /** Upstream connect timeout. */
  connectTimeoutMs: number;
  /** Request bytes held at once, over all of the sandbox's requests, while looking for placeholders. */
  maxBufferedBytes: number;
  /** Counted here: requests refused for a placeholder. */
  stats: { injectionsRefused: number };
  onError?: OnEgressError | undefined;
}

/** One request on a terminated connection whose response has not ended. */
interface Exchange {
  socket: Duplex;
  upstream: http.ClientRequest | null;
}

export class EgressInjector {
  readonly #o: EgressInjectorOptions;
  /** Parses the requests of TLS connections the proxy terminated. */
  readonly #inner: http.Server;
  /** Parses plain HTTP tunnelled through CONNECT. */
  readonly #plainInner: http.Server;
  readonly #targets = new WeakMap<object, EgressTarget>();
  readonly #agent: https.Agent;
  readonly #tlsSockets = new Set<tls.TLSSocket>();
  /** Exchanges whose response has not ended (cut at job end). */
  readonly #inFlight = new Set<Exchange>();
  /** Request bytes held now for placeholder checks, against `maxBufferedBytes`. */
  #buffered = 0;

  constructor(options: EgressInjectorOptions) {
    this.#o = options;
    const contain = containedBy(options.onError);
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
      ...(options.upstreamCa ? { ca: [...tls.rootCertificates, options.upstreamCa] } : {}),
    });
  }

  /**
   * Takes over a CONNECT the policy allowed: answers it, then terminates the sandbox's TLS with a
   * certificate of the fleet CA for the host, or reads plain HTTP when the first byte does not open
   * a TLS handshake (some clients tunnel plain HTTP through CONNECT too: Node 22's fetch).
   */
  async terminate(socket: Duplex, head: Buffer, target: EgressTarget): Promise<void> {
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head.length) socket.unshift(head);
    const first = await new Promise<Buffer | null>((resolve) => {
      socket.once('data', (chunk: Buffer) => {
        socket.pause();
        socket.unshift(chunk);
        resolve(chunk);
      });
      socket.once('close', () => resolve(null));
    });
    if (!first) return;
    if (first[0] !== 0x16) {
      this.#targets.set(socket, target);
      this.#plainInner.emit('connection', socket);
      socket.resume();
      return;
    }
    let context: tls.SecureContext;
    try {
      context = await this.#o.ca.contextFor(target.host);
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
    this.#tlsSockets.add(tlsSocket);
    tlsSocket.on('close', () => this.#tlsSockets.delete(tlsSocket));
    this.#targets.set(tlsSocket, target);
    this.#inner.emit('connection', tlsSocket);
  }

  /** A plain-HTTP request with a placeholder in it is refused here (true): injected secrets travel only over TLS. */
  refusesPlain(req: IncomingMessage, res: ServerResponse, destination: string): boolean {
    const refused = checkPlainRequest({ url: req.url ?? '', headers: req.headers }, this.#o.registry);
    if (!refused) return false;
    this.#refuse(res, { jobId: this.#o.currentJob(), secret: refused.secret, destination, reason: refused.reason });
    return true;
  }

  /**
   * Job end (the sandbox host calls it, before the job's values are zeroed): every exchange still
   * in flight is cut, upstream and toward the sandbox, and the upstream connections are closed, so
   * no response for the ended job reaches the sandbox (where its values, zeroed, could no longer
   * mask it). Idle connections from the sandbox stay open for its next job.
   */
  endJob(): void {
    for (const x of this.#inFlight) {
      x.upstream?.destroy();
      x.socket.destroy();
    }
    this.#inFlight.clear();
    this.#agent.destroy();
  }

  close(): void {
    this.#agent.destroy();
    for (const s of this.#tlsSockets) s.destroy();
  }

  /** Plain HTTP that arrived through CONNECT (origin-form requests). */
  #onTunneledPlain(req: IncomingMessage, res: ServerResponse): void {
    const t = this.#targets.get(req.socket);
    if (!t) {
      res.writeHead(502).end();
      return;
    }
    const destination = `${t.host}:${t.port}`;
    const other = namesOtherHost(req, t);
    if (other) {
      this.#refuse(res, { jobId: this.#o.currentJob(), secret: null, destination, reason: other });
      return;
    }
    if (this.refusesPlain(req, res, destination)) return;
    forwardPlain(req, res, t, new URL(requestPath(req), `http://${destination}`), this.#o.connectTimeoutMs);
  }

  #refuse(res: ServerResponse, refusal: InjectionRefusal): void {
    this.#o.stats.injectionsRefused += 1;
    this.#o.onRefused({
      ...refusal,
      destination: clipText(refusal.destination, 260),
      reason: clipText(refusal.reason, 500),
    });
    res
      .writeHead(403, { 'content-type': 'text/plain', 'x-fleet-egress': 'refused' })
      .end(`fleet egress proxy refused to send a secret placeholder to ${refusal.destination}: ${refusal.reason}\n`);
  }

  /**
   * One request on a terminated TLS connection: read whole, checked, its placeholders swapped for
   * their values, and sent on; the response comes back with every value of the job masked.
   */
  async #onInjectable(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const t = this.#targets.get(req.socket);
    if (!t) {
      res.writeHead(502).end();
      return;
    }
    const destination = `${t.host}:${t.port}`;
    const jobId = this.#o.currentJob();
    // A request inside the tunnel for another host would carry the value to whatever a shared
    // front end routes that Host to.
    const other = namesOtherHost(req, t);
    if (other) {
      this.#refuse(res, { jobId, secret: null, destination, reason: other });
      return;
    }
    const exchange: Exchange = { socket: req.socket, upstream: null };
    this.#inFlight.add(exchange);
    res.once('close', () => this.#inFlight.delete(exchange));
    const body = await this.#readBody(req, res);
    if (!body) return;
    const checked = checkRequest({ url: req.url ?? '', headers: req.headers, body }, { ...t, jobId }, this.#o.registry);
    if (!checked.ok) {
      this.#refuse(res, { jobId, secret: checked.secret, destination, reason: checked.reason });
      return;
    }
    const sent = injectedRequest(req.headers, body, checked.swaps);
    for (const injection of checked.swaps.values()) this.#o.onInjected({ injection, destination });
    const pairs = maskPairs(this.#o.registry.valuesOf(jobId));
    const upstream = https.request(
      {
        host: t.address,
        port: t.port,
        ...(isIP(t.host) ? {} : { servername: t.host }),
        method: req.method,
        path: requestPath(req),
        headers: sent.headers,
        agent: this.#agent,
        timeout: this.#o.connectTimeoutMs,
      },
      (up) => answer(res, up, destination, () => maskedResponse(up, pairs, destination)),
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
    upstream.end(sent.body);
  }

  /**
   * A request's body, held whole to be searched; null when a limit answered the request instead:
   * the body's own size (413), or the bytes all of the sandbox's requests hold at once (503).
   */
  async #readBody(req: IncomingMessage, res: ServerResponse): Promise<Buffer | null> {
    const chunks: Buffer[] = [];
    let size = 0;
    // Bytes held for this request count against the sandbox's total until its response ends.
    res.once('close', () => {
      this.#buffered -= size;
    });
    for await (const data of req) {
      const c = Buffer.isBuffer(data) ? data : Buffer.from(String(data));
      size += c.length;
      this.#buffered += c.length;
      if (this.#buffered > this.#o.maxBufferedBytes) {
        res
          .writeHead(503, { 'content-type': 'text/plain', connection: 'close', 'x-fleet-egress': 'refused' })
          .end(
            `fleet egress proxy: this sandbox's requests hold more than ${this.#o.maxBufferedBytes} bytes at once (maxEgressBufferedBytes); send fewer uploads in parallel\n`,
          );
        req.destroy();
        return null;
      }
      if (size > this.#o.maxBodyBytes) {
        res
          .writeHead(413, { 'content-type': 'text/plain', connection: 'close' })
          .end(
            `fleet egress proxy: request bodies above ${this.#o.maxBodyBytes} bytes are not sent by a sandbox with injected secrets (supervisor.injectMaxBodyBytes)\n`,
          );
        return null;
      }
      chunks.push(c);
    }
    return Buffer.concat(chunks);
  }
}
