import express, { type NextFunction, type Request, type Response } from 'express';
import { STATUS_CODES, type Server as HttpServer } from 'node:http';
import https from 'node:https';
import { API_TLS, loadTlsFiles, type TlsFiles } from '../config/tls.js';
import { JOB_TYPE_NAME } from '../config/schema.js';
import { AuthError, FleetError, JobNotFoundError, fieldOf, toError, type ErrorCode } from '../errors.js';
import { silentLogger, type Logger } from '../observability/logger.js';
import { mountBullBoard } from './bull-board.js';
import type { FleetMetrics } from '../observability/metrics.js';
import { mayCancelJob, maySeeJob, ProducerAuth, type ProducerIdentity } from './auth.js';
import { parseDuration } from '../config/duration.js';
import { jobTypeOfId } from '../producers/job-id.js';
import { auditQuerySchema, batchBodySchema, firstIssue, openApiDocument } from './api-schemas.js';

/** The API's version in its OpenAPI document. */
const API_VERSION = '1.0.0';
import type { JobView } from '../producers/job-view.js';
import type { Producer } from '../producers/producer.js';

export interface ApiOptions {
  producer: Producer;
  /** Serve `/metrics` from this registry and time every request. */
  metrics?: FleetMetrics;
  /** Who may call the API. @defaultValue config.producers */
  producers?: readonly ProducerIdentity[];
  logger?: Logger;
  /** Bull Board's queues come from this producer (a read-only Redis role) when given. @defaultValue producer */
  boardProducer?: Producer;
  /** Extra routers mounted before the 404 handler (metrics, Bull Board, audit). */
  mount?: (app: express.Express) => void;
}

const STATUS: Partial<Record<ErrorCode | 'JOB_FINISHED', number>> = {
  INVALID_JSON: 400,
  INVALID_REQUEST: 400,
  PAYLOAD_TOO_DEEP: 400,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  UNKNOWN_JOB_TYPE: 404,
  JOB_NOT_FOUND: 404,
  JOB_FINISHED: 409,
  IDEMPOTENCY_KEY_IN_FLIGHT: 409,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  INVALID_PAYLOAD: 422,
  IDEMPOTENCY_KEY_REUSED: 422,
  REDIS_UNAVAILABLE: 503,
  DATA_KEY_UNAVAILABLE: 503,
  TLS_REFUSED: 503,
  REDIS_FULL: 507,
};

interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

function send(res: Response, status: number, code: string, message: string, details?: Record<string, unknown>): void {
  const body: ErrorBody = { error: { code, message, ...(details ? { details } : {}) } };
  if (status === 401) res.setHeader('WWW-Authenticate', 'Bearer realm="fleet"');
  res.status(status).json(body);
}

/**
 * Whether JSON text nests arrays/objects deeper than `max`, read from the raw bytes (brackets
 * inside strings do not count). Linear, no recursion, stops at the first level too deep.
 */
export function exceedsDepth(buf: Uint8Array, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}

/** Shortens anything user-supplied before it is echoed in an error. */
const shown = (s: string): string => JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);

type Authed = Request & { producer?: ProducerIdentity };

/**
 * The HTTP enqueue API (express 5). Every error is `{ error: { code, message, details? } }` with a
 * precise status; a request that fails validation enqueues nothing.
 */
export function createApiApp(options: ApiOptions): express.Express {
  const { producer } = options;
  const log = (options.logger ?? silentLogger).scope({ component: 'api' });
  const auth = new ProducerAuth(options.producers ?? producer.config.producers);
  const cfg = producer.config.api;
  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple');

  const metrics = options.metrics;
  if (metrics) {
    app.use((req, res, next) => {
      const end = metrics.httpDuration.startTimer();
      res.on('finish', () => {
        // The matched route pattern, never the raw path (ids would make labels unbounded).
        const route = req.route ? `${req.baseUrl}${String(req.route.path)}` : 'unmatched';
        metrics.httpRequests.labels(req.method, route, String(res.statusCode)).inc();
        end({ method: req.method, route });
      });
      next();
    });
    app.get('/metrics', async (_req, res) => {
      const m = await metrics.render();
      res.type(m.contentType).send(m.body);
    });
  }
  if (cfg.bullBoard.enabled)
    mountBullBoard(app, {
      producer: options.boardProducer ?? producer,
      auth,
      path: cfg.bullBoard.path,
      readOnly: cfg.bullBoard.readOnly,
    });

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    try {
      await producer.ping();
      res.json({ status: 'ready', checks: { redis: 'ok' } });
    } catch (err) {
      res.status(503).json({ status: 'unready', checks: { redis: toError(err).message } });
    }
  });
  options.mount?.(app);

  const known = (type: string | undefined): boolean => type !== undefined && producer.config.jobTypes.has(type);
  const allowedMethods = (p: string): string | undefined => {
    const [, segment, batch] = /^\/v1\/jobs\/([^/]+?)(\/batch)?$/.exec(p) ?? [];
    if (segment !== undefined)
      return known(segment) ? 'POST' : /^[a-z][a-z0-9-]{0,62}\./.test(segment) && !batch ? 'GET, DELETE' : undefined;
    if (/^\/v1\/(job-types|audit|openapi\.json)$/.test(p) || /^\/(healthz|readyz|metrics)$/.test(p)) return 'GET';
    return undefined;
  };
  const v1 = express.Router();
  v1.use((req: Authed, _res, next) => {
    req.producer = auth.authenticate(req.get('authorization'));
    next();
  });
  // Methods first: a method a path does not have is 405 with the exact Allow list (OPTIONS
  // answers that list), before any check of the body it would have carried.
  v1.use((req, res, next) => {
    const allow = allowedMethods(`${req.baseUrl}${req.path}`);
    if (!allow) return next();
    if (req.method === 'OPTIONS') {
      res.setHeader('Allow', allow);
      res.status(204).end();
      return;
    }
    if (!allow.split(', ').includes(req.method) && !(req.method === 'HEAD' && allow.includes('GET'))) {
      res.setHeader('Allow', allow);
      return send(
        res,
        405,
        'METHOD_NOT_ALLOWED',
        `${req.method} is not allowed on ${shown(req.path)}; allowed: ${allow}`,
      );
    }
    next();
  });
  v1.use((req, _res, next) => {
    if (req.method === 'POST' && !req.is('application/json')) {
      throw new FleetError('UNSUPPORTED_MEDIA_TYPE', 'send the payload as JSON with "Content-Type: application/json"');
    }
    next();
  });
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  v1.use(
    express.json({
      limit: cfg.bodyLimitBytes,
      strict: false,
      type: 'application/json',
      // Invalid UTF-8 is refused, not silently turned into U+FFFD.
      verify: (_req, _res, buf) => {
        try {
          utf8.decode(buf);
        } catch {
          throw new FleetError('INVALID_JSON', 'body is not valid UTF-8');
        }
        // Before JSON.parse: a deeply nested body would otherwise reach validation code that
        // recurses once per level (a stack overflow, answered 5xx).
        if (exceedsDepth(buf, cfg.maxJsonDepth)) {
          throw new FleetError(
            'PAYLOAD_TOO_DEEP',
            `body nests arrays/objects deeper than api.maxJsonDepth=${cfg.maxJsonDepth}`,
          );
        }
      },
    }),
  );

  /** Who is calling; every /v1 route runs after the authenticating middleware above. */
  const caller = (req: Authed): ProducerIdentity => {
    if (!req.producer) throw new AuthError('request reached a /v1 route without authentication');
    return req.producer;
  };
  const jobTypeParam = (req: Authed): string => {
    const name = String(req.params.type);
    if (!JOB_TYPE_NAME.test(name) || !producer.config.jobTypes.has(name)) {
      throw new FleetError('UNKNOWN_JOB_TYPE', `unknown job type ${shown(name)}. GET /v1/job-types lists them.`);
    }
    auth.authorize(caller(req), name);
    return name;
  };
  const jobIdParam = (req: Authed): string => {
    const id = String(req.params.id);
    const type = jobTypeOfId(id);
    if (!type || !producer.config.jobTypes.has(type))
      throw new FleetError('JOB_NOT_FOUND', `no job with id ${shown(id)}`);
    auth.authorize(caller(req), type);
    return id;
  };
  const idempotencyKey = (req: Request): { idempotencyKey?: string } => {
    const key = req.get('idempotency-key');
    return key === undefined ? {} : { idempotencyKey: key };
  };
  // Each producer's idempotency keys are its own: two services may use the same key.
  const producerFor = (req: Authed): Producer => producerByName(producer, caller(req).name);

  v1.get('/job-types', (req: Authed, res) => {
    res.json({ jobTypes: producer.listJobTypes().filter((t) => auth.allows(caller(req), t.name)) });
  });

  v1.post('/jobs/:type', async (req: Authed, res, next) => {
    if (isJobId(req)) return next();
    const type = jobTypeParam(req);
    if (req.body === undefined) throw new FleetError('INVALID_JSON', 'request body is empty; send the payload as JSON');
    // The payload is checked against the type's schema inside enqueue; the static Payloads map is for TS callers.
    // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- see the line above
    const r = await producerFor(req).enqueue(type, req.body as never, idempotencyKey(req));
    res.status(202).location(`/v1/jobs/${r.id}`).json(r);
  });

  const batchBody = batchBodySchema(cfg.maxBatchSize);
  v1.post('/jobs/:type/batch', async (req: Authed, res) => {
    const type = jobTypeParam(req);
    const parsed = batchBody.safeParse(req.body);
    if (!parsed.success) {
      const jobs = fieldOf(req.body, 'jobs');
      if (Array.isArray(jobs) && jobs.length > cfg.maxBatchSize)
        throw new FleetError(
          'INVALID_REQUEST',
          `batch has ${jobs.length} jobs; the limit is api.maxBatchSize=${cfg.maxBatchSize}`,
        );
      if (!Array.isArray(jobs) || jobs.length === 0)
        throw new FleetError(
          'INVALID_REQUEST',
          'batch body must be {"jobs": [{"data": …, "idempotencyKey"?: "…"}, …]} with at least one job',
        );
      const issue = firstIssue(parsed.error);
      const at = issue.path
        .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
        .join('')
        .replace(/^\./, '');
      throw new FleetError('INVALID_REQUEST', `${at || 'batch body'}: ${issue.message}`, {
        details: {
          issues: parsed.error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message })),
        },
      });
    }
    // As for single enqueue: enqueueBatch checks each payload against the type's schema.
    /* eslint-disable @typescript-eslint/consistent-type-assertions -- see the line above */
    const items = parsed.data.jobs.map((j) =>
      j.idempotencyKey === undefined
        ? { data: j.data as never }
        : { data: j.data as never, idempotencyKey: j.idempotencyKey },
    );
    /* eslint-enable @typescript-eslint/consistent-type-assertions -- end of the payload casts */
    const r = await producerFor(req).enqueueBatch(type, items);
    res.status(202).json({ jobs: r });
  });

  v1.get('/openapi.json', (req: Authed, res) => {
    const types = [...producer.config.jobTypes.values()].filter((t) => auth.allows(caller(req), t.name));
    res.json(openApiDocument(types, { maxBatchSize: cfg.maxBatchSize, version: API_VERSION }));
  });

  /** A job the caller may see, or the same 404 a missing job gets (ids do not reveal existence). */
  const visibleJob = async (req: Authed, may: (p: ProducerIdentity, j: JobView) => boolean): Promise<JobView> => {
    const id = jobIdParam(req);
    const job = await producer.getJob(id);
    if (!may(caller(req), job))
      throw new JobNotFoundError(
        `no job with id "${id}" (finished jobs are kept for keepCompletedSeconds/keepFailedSeconds)`,
      );
    return job;
  };

  // `/v1/jobs/<type>` and `/v1/jobs/<type>.<hex>` share a shape: a segment without a dot is a
  // type (POST only), one with a dot a job id (GET, DELETE); the rest is answered 405 below.
  const isJobId = (req: Request): boolean => /^[a-z][a-z0-9-]{0,62}\./.test(String(req.params.id ?? req.params.type));
  v1.get('/jobs/:id', async (req: Authed, res, next) => {
    if (!isJobId(req)) return next();
    const job = await visibleJob(req, maySeeJob);
    // Data sealed at rest is opened for its owner alone; readers by scope and admins see it sealed.
    res.json(job.owner === caller(req).name ? await producer.openJob(job) : job);
  });

  v1.delete('/jobs/:id', async (req: Authed, res, next) => {
    if (!isJobId(req)) return next();
    const job = await visibleJob(req, maySeeJob);
    if (!mayCancelJob(caller(req), job))
      throw new FleetError(
        'FORBIDDEN',
        `producer "${caller(req).name}" may read job ${job.id} (read scope) but not cancel it: only its owner "${job.owner}" or an admin can.`,
      );
    const r = await producer.cancel(job.id);
    if (r.outcome === 'already-finished') {
      send(res, 409, 'JOB_FINISHED', `job already ${r.previousState}; nothing to cancel`);
      return;
    }
    res.status(r.outcome === 'removed' ? 200 : 202).json(r);
  });

  v1.get('/audit', async (req: Authed, res) => {
    if (!caller(req).admin)
      throw new FleetError(
        'FORBIDDEN',
        `producer "${caller(req).name}" may not read the audit log. Fix: set admin: true on it.`,
      );
    const parsedQuery = auditQuerySchema.safeParse(req.query);
    if (!parsedQuery.success) {
      const issue = firstIssue(parsedQuery.error);
      throw new FleetError(
        'INVALID_REQUEST',
        `query ${issue.path.join('.') || ''}: ${issue.message}`.replace('query : ', 'query: '),
      );
    }
    const q = parsedQuery.data;
    const limit = q.limit === undefined ? 1000 : Number(q.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000)
      throw new FleetError('INVALID_REQUEST', 'limit must be an integer from 1 to 10000');
    // A window longer than the stream's life reads from its start (never a negative stream id).
    const sinceMs = q.since === undefined ? undefined : Math.max(0, Date.now() - parseDuration(q.since));
    const records = await producer.audit({
      limit,
      ...(sinceMs !== undefined ? { sinceMs } : {}),
      ...(q.secret ? { secret: q.secret } : {}),
      ...(q.denied === 'true' ? { deniedOnly: true } : {}),
    });
    res.json({ records });
  });

  app.use('/v1', v1);

  // A known path with a method it does not have: 405 with Allow (HTTP semantics), not 404.
  app.use((req, res) => {
    const allow = allowedMethods(req.path);
    if (allow && !allow.split(', ').includes(req.method)) {
      res.setHeader('Allow', allow);
      return send(
        res,
        405,
        'METHOD_NOT_ALLOWED',
        `${req.method} is not allowed on ${shown(req.path)}; allowed: ${allow}`,
      );
    }
    send(res, 404, 'NOT_FOUND', `no route ${req.method} ${shown(req.path)}`);
  });
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    // body-parser's errors carry `type` and `status`.
    const type = fieldOf(err, 'type');
    const status = fieldOf(err, 'status');
    const message = toError(err).message;
    if (type === 'entity.parse.failed') return send(res, 400, 'INVALID_JSON', `body is not valid JSON: ${message}`);
    if (type === 'entity.too.large')
      return send(res, 413, 'PAYLOAD_TOO_LARGE', `body is larger than api.bodyLimitBytes=${cfg.bodyLimitBytes}`);
    if (type === 'encoding.unsupported' || type === 'charset.unsupported')
      return send(res, 415, 'UNSUPPORTED_MEDIA_TYPE', message);
    if (err instanceof FleetError) {
      const status = STATUS[err.code] ?? 500;
      if (status >= 500)
        log.error('request failed', { code: err.code, error: err.message, method: req.method, path: req.path });
      return send(res, status, err.code, err.message, err.details);
    }
    if (typeof status === 'number' && status >= 400 && status < 500)
      return send(res, status, 'INVALID_REQUEST', message);
    log.error('unexpected error', {
      error: toError(err).message,
      stack: toError(err).stack,
      method: req.method,
      path: req.path,
    });
    send(res, 500, 'INTERNAL', 'internal error; see the server log');
  });
  return app;
}

const byName = new WeakMap<Producer, Map<string, Producer>>();
/** Producers sharing one connection and config, differing only in the name their idempotency keys are scoped to. */
function producerByName(base: Producer, name: string): Producer {
  let m = byName.get(base);
  if (!m) byName.set(base, (m = new Map()));
  let p = m.get(name);
  if (!p) {
    p = base.withName(name);
    m.set(name, p);
  }
  return p;
}

/** How long a connection refused by the HTTP parser is read (and discarded) after its answer. */
const LINGER_MS = 2000;

/** The answer to a request Node's HTTP parser refused, before express saw it. */
function parserRefusal(err: NodeJS.ErrnoException): { status: number; code: string; message: string } {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return {
        status: 431,
        code: 'HEADERS_TOO_LARGE',
        message: 'request headers are larger than the server accepts (16 KiB in all)',
      };
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return { status: 408, code: 'REQUEST_TIMEOUT', message: 'the request was not received in time' };
    default:
      return {
        status: 400,
        code: 'BAD_HTTP_REQUEST',
        message: `not a valid HTTP/1.1 request (${err.code ?? 'parse error'})`,
      };
  }
}

/**
 * A request the HTTP parser refuses (oversized headers, malformed request line, not HTTP at all)
 * still gets a JSON error envelope. Node's default answer closes the socket at once: with the
 * client still sending its body, the kernel then resets the connection and the client reads a
 * connection error instead of the answer. Here the answer is sent, the write side closed, and
 * what the client still sends is read and discarded for a short while (a "lingering close").
 */
function answerParserErrors(server: Server): void {
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const r = parserRefusal(err);
    const body = JSON.stringify({ error: { code: r.code, message: r.message } });
    socket.end(
      `HTTP/1.1 ${r.status} ${STATUS_CODES[r.status] ?? 'Error'}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
    socket.on('error', () => undefined);
    socket.resume();
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  });
}

/** The API's server: plain HTTP, or HTTPS with `api.tls`. */
export type Server = HttpServer | https.Server;

/**
 * Starts the API on the configured host/port, over HTTPS when `tls` names a certificate and key
 * (read once, here); resolves with the listening server.
 */
export function listen(
  app: express.Express,
  host: string,
  port: number,
  tls: Pick<TlsFiles, 'certFile' | 'keyFile'> = {},
): Promise<Server> {
  const pem = tls.certFile ? loadTlsFiles(tls, API_TLS) : null;
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    const onListening = (err?: Error): void => {
      server.off('error', onError);
      if (err) reject(err);
      else resolve(server);
    };
    const server: Server = pem
      ? https.createServer({ cert: pem.cert, key: pem.key }, app).listen(port, host, onListening)
      : app.listen(port, host, onListening);
    server.once('error', onError);
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    answerParserErrors(server);
  });
}
