/**
 * The /v1 routes: job types, enqueueing (one job or a batch), a job's view and its cancellation,
 * the OpenAPI document and the audit log. Each runs after the authenticating middleware.
 */
import type { Request, Router } from 'express';
import type { FleetConfig } from '../config/resolve.js';
import { JOB_TYPE_NAME } from '../config/schema.js';
import { parseDuration } from '../config/duration.js';
import { AuthError, FleetError, JobNotFoundError, fieldOf } from '../errors.js';
import { jobTypeOfId } from '../producers/job-id.js';
import type { JobView } from '../producers/job-view.js';
import type { Producer } from '../producers/producer.js';
import { auditQuerySchema, batchBodySchema, firstIssue, openApiDocument } from './api-schemas.js';
import { mayCancelJob, maySeeJob, type ProducerAuth, type ProducerIdentity } from './auth.js';
import { send, shown } from './http-errors.js';

/** The API's version in its OpenAPI document. */
const API_VERSION = '1.0.0';

/** A request the authenticating middleware has seen: `producer` is who is calling. */
export type Authed = Request & { producer?: ProducerIdentity };

/** The methods a path of the API has (its `Allow` list), or undefined for a path it does not have. */
export function allowedMethods(config: FleetConfig, p: string): string | undefined {
  const known = (type: string | undefined): boolean => type !== undefined && config.jobTypes.has(type);
  const [, segment, batch] = /^\/v1\/jobs\/([^/]+?)(\/batch)?$/.exec(p) ?? [];
  if (segment !== undefined)
    return known(segment) ? 'POST' : /^[a-z][a-z0-9-]{0,62}\./.test(segment) && !batch ? 'GET, DELETE' : undefined;
  if (/^\/v1\/(job-types|audit|openapi\.json)$/.test(p) || /^\/(healthz|readyz|metrics)$/.test(p)) return 'GET';
  return undefined;
}

/** Adds the /v1 routes to `v1`, a router whose requests are authenticated ({@link Authed}). */
export function addV1Routes(v1: Router, { producer, auth }: { producer: Producer; auth: ProducerAuth }): void {
  const cfg = producer.config.api;
  /** Who is calling; every /v1 route runs after the authenticating middleware (http-api.ts). */
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
