/**
 * A dependency-free HTTP client for the enqueue API, for services that do not share the fleet's
 * config or Redis. Errors carry the API's machine-readable `code`.
 */
import { fieldOf } from '../errors.js';

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
  /** e.g. `http://127.0.0.1:8080` */
  baseUrl: string;
  token: string;
  /** @defaultValue 10000 */
  timeoutMs?: number;
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
  async function call<T>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<T> {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${options.token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        ...headers,
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
    });
    const text = await res.text();
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
    if (!res.ok) {
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
