/**
 * A dependency-free HTTP client for the enqueue API, for services that do not share the fleet's
 * config or Redis. Errors carry the API's machine-readable `code`.
 */
import { fieldOf, tlsFailureOf, type TlsFailure } from '../errors.js';

export class FleetHttpError extends Error {
  override name = 'FleetHttpError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
  }
}

export interface HttpClientOptions {
  /** e.g. `https://fleet-api:8443`, or `http://127.0.0.1:8080` on loopback */
  baseUrl: string;
  token: string;
  /** @defaultValue 10000 */
  timeoutMs?: number;
  /**
   * CA certificates (PEM) trusted for an `https` API's certificate instead of the runtime's
   * bundled roots: a private CA's. An `https` API is reached through `node:https` (Node only), with
   * verification always on, NODE_TLS_REJECT_UNAUTHORIZED=0 notwithstanding. @defaultValue the bundled roots
   */
  ca?: string | Buffer;
}

const CLIENT_TLS_FIX: Record<TlsFailure['kind'], string> = {
  untrusted: "pass `ca` (the PEM of the CA that signed the API's certificate) to createHttpClient",
  name: 'use a baseUrl whose host the certificate names',
  expired: "renew the API's certificate (api.tls.certFile)",
  'client-certificate': 'the server asks for a client certificate, which the fleet API never does: is baseUrl right?',
  'client-certificate-refused':
    'the server refuses client certificates, which the fleet API never asks for: is baseUrl right?',
  'not-tls': 'the API speaks plain HTTP on that port: use http:// (on loopback only) or set api.tls',
  other: "check the API's certificate (api.tls)",
};

/** One HTTP exchange: status and body text. */
type Send = (
  method: string,
  url: string,
  headers: Record<string, string>,
  body: string | undefined,
  signal: AbortSignal,
) => Promise<{ status: number; text: string }>;

const sendWithFetch: Send = async (method, url, headers, body, signal) => {
  const res = await fetch(url, { method, headers, ...(body === undefined ? {} : { body }), signal });
  return { status: res.status, text: await res.text() };
};

/**
 * An `https` API is reached through `node:https` with verification set on the request itself:
 * `fetch` takes neither a CA nor `rejectUnauthorized`, so NODE_TLS_REJECT_UNAUTHORIZED=0 would turn
 * its verification off, and the bearer token and payload would go to whoever answers.
 */
function sendWithHttps(ca: string | Buffer | undefined): Send {
  return async (method, url, headers, body, signal) => {
    const https = await import('node:https');
    return new Promise((resolve, reject) => {
      const options = { method, headers, ...(ca === undefined ? {} : { ca }), rejectUnauthorized: true, signal };
      const req = https.request(url, options, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      });
      req.on('error', reject);
      req.end(body);
    });
  };
}

export interface HttpClient {
  enqueue(type: string, data: unknown, options?: { idempotencyKey?: string }): Promise<{ id: string; type: string }>;
  enqueueBatch(
    type: string,
    jobs: { data: unknown; idempotencyKey?: string }[],
  ): Promise<{ id: string; type: string }[]>;
  getJob(id: string): Promise<Record<string, unknown>>;
  cancel(id: string): Promise<Record<string, unknown>>;
  jobTypes(): Promise<Record<string, unknown>[]>;
}

export function createHttpClient(options: HttpClientOptions): HttpClient {
  const base = options.baseUrl.replace(/\/+$/, '');
  const send = base.startsWith('https:') ? sendWithHttps(options.ca) : sendWithFetch;
  async function call<T>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<T> {
    const res = await send(
      method,
      `${base}${path}`,
      {
        authorization: `Bearer ${options.token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        ...headers,
      },
      body === undefined ? undefined : JSON.stringify(body),
      AbortSignal.timeout(options.timeoutMs ?? 10_000),
    ).catch((err: unknown) => {
      const tls = tlsFailureOf(err);
      if (!tls) throw err;
      throw new FleetHttpError(
        0,
        'TLS_REFUSED',
        `the fleet API at ${base} refused TLS: ${tls.reason}. Fix: ${CLIENT_TLS_FIX[tls.kind]}.`,
      );
    });
    const text = res.text;
    let json: unknown = {};
    try {
      if (text) json = JSON.parse(text);
    } catch {
      throw new FleetHttpError(
        res.status,
        'HTTP_ERROR',
        `HTTP ${res.status}, and the body is not JSON: ${text.slice(0, 200)}`,
      );
    }
    if (res.status < 200 || res.status > 299) {
      const e = fieldOf(json, 'error');
      const [code, message, details] = [fieldOf(e, 'code'), fieldOf(e, 'message'), fieldOf(e, 'details')];
      throw new FleetHttpError(
        res.status,
        typeof code === 'string' ? code : 'HTTP_ERROR',
        typeof message === 'string' ? message : `HTTP ${res.status}`,
        typeof details === 'object' && details !== null ? { ...details } : undefined,
      );
    }
    // The answer of a 2xx is the shape the API's OpenAPI document gives for this route.
    // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- see the line above
    return json as T;
  }
  const seg = encodeURIComponent;
  return {
    enqueue: (type, data, o = {}) =>
      call('POST', `/v1/jobs/${seg(type)}`, data, o.idempotencyKey ? { 'idempotency-key': o.idempotencyKey } : {}),
    enqueueBatch: async (type, jobs) =>
      (await call<{ jobs: { id: string; type: string }[] }>('POST', `/v1/jobs/${seg(type)}/batch`, { jobs })).jobs,
    getJob: (id) => call('GET', `/v1/jobs/${seg(id)}`),
    cancel: (id) => call('DELETE', `/v1/jobs/${seg(id)}`),
    jobTypes: async () => (await call<{ jobTypes: Record<string, unknown>[] }>('GET', '/v1/job-types')).jobTypes,
  };
}
