/**
 * The HTTP API's contract: zod schemas of what it accepts and answers (the batch body is parsed
 * with them), and the OpenAPI 3.1 document built from the same schemas plus each job type's
 * payload schema (`GET /v1/openapi.json`).
 */
import { z } from 'zod';
import type { JobType } from '../config/resolve.js';
import type { ErrorCode } from '../errors.js';
import { IDEMPOTENCY_KEY } from '../producers/job-id.js';

/** `Idempotency-Key`: 1–200 visible ASCII characters. */
export const idempotencyKeySchema = z
  .string()
  .regex(IDEMPOTENCY_KEY, 'Idempotency-Key must be 1–200 visible ASCII characters');

export const batchBodySchema = (maxBatchSize: number) =>
  z
    .object({
      jobs: z
        // `data` is checked against the job type's own payload schema afterwards (once, not twice);
        // here it only has to be present. The OpenAPI document shows the payload schema in its place.
        .array(
          z
            .object({ data: z.unknown(), idempotencyKey: idempotencyKeySchema.optional() })
            .strict()
            .refine((j) => j.data !== undefined, { message: 'each job needs a "data" field', path: ['data'] }),
        )
        .min(1)
        .max(maxBatchSize),
    })
    .strict();

/** `GET /v1/audit` query: each parameter at most once. */
export const auditQuerySchema = z
  .object({
    limit: z
      .string()
      .regex(/^[0-9]{1,5}$/, 'limit must be an integer from 1 to 10000')
      .optional(),
    since: z
      .string()
      .regex(/^[0-9]+(s|m|h|d|w)$/, 'since must be a duration such as 90s, 30m, 24h, 7d, 2w')
      .optional(),
    secret: z.string().max(200).optional(),
    denied: z.enum(['true', 'false']).optional(),
  })
  .strict();

export const enqueueResultSchema = z.object({ id: z.string(), type: z.string() });

const jobStates = [
  'waiting',
  'active',
  'delayed',
  'prioritized',
  'completed',
  'failed',
  'waiting-children',
  'unknown',
] as const;
export const jobViewSchema = z.object({
  id: z.string(),
  type: z.string(),
  owner: z.string(),
  state: z.enum(jobStates),
  attemptsMade: z.number().int(),
  maxAttempts: z.number().int(),
  progress: z.json(),
  data: z.json(),
  result: z.json(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  timings: z.object({
    enqueuedAt: z.number(),
    startedAt: z.number().nullable(),
    finishedAt: z.number().nullable(),
    durationMs: z.number().nullable(),
  }),
});

export const cancelResultSchema = z.object({
  id: z.string(),
  previousState: z.enum(jobStates),
  outcome: z.enum(['removed', 'cancelling']),
});

export const errorEnvelopeSchema = z.object({
  error: z.object({ code: z.string(), message: z.string(), details: z.record(z.string(), z.unknown()).optional() }),
});

/** Every error code the HTTP API answers with, by status. */
export const API_ERRORS: Record<
  number,
  readonly (
    | ErrorCode
    | 'NOT_FOUND'
    | 'JOB_FINISHED'
    | 'METHOD_NOT_ALLOWED'
    | 'HEADERS_TOO_LARGE'
    | 'BAD_HTTP_REQUEST'
    | 'REQUEST_TIMEOUT'
  )[]
> = {
  400: ['INVALID_JSON', 'INVALID_REQUEST', 'PAYLOAD_TOO_DEEP', 'BAD_HTTP_REQUEST'],
  401: ['UNAUTHENTICATED'],
  403: ['FORBIDDEN'],
  404: ['UNKNOWN_JOB_TYPE', 'JOB_NOT_FOUND', 'NOT_FOUND'],
  405: ['METHOD_NOT_ALLOWED'],
  408: ['REQUEST_TIMEOUT'],
  409: ['JOB_FINISHED', 'IDEMPOTENCY_KEY_IN_FLIGHT'],
  413: ['PAYLOAD_TOO_LARGE'],
  415: ['UNSUPPORTED_MEDIA_TYPE'],
  422: ['INVALID_PAYLOAD', 'IDEMPOTENCY_KEY_REUSED'],
  431: ['HEADERS_TOO_LARGE'],
  500: ['INTERNAL'],
  503: ['REDIS_UNAVAILABLE', 'DATA_KEY_UNAVAILABLE', 'TLS_REFUSED'],
  507: ['REDIS_FULL'],
};

type Json = Record<string, unknown>;

/**
 * JSON Schema made by zod keeps recursive parts (any JSON value) in its own `$defs`, referenced
 * as `#/$defs/…` from its root. Inside an OpenAPI document those references would point at the
 * document's root, so each schema's `$defs` move into `components.schemas` under a unique prefix
 * and its references are rewritten.
 */
function hoisted(root: Json, prefix: string, components: Record<string, Json>): Json {
  const { $defs, $schema: _s, ...rest } = root;
  const rewriteJson = (v: Json): Json =>
    Object.fromEntries(
      Object.entries(v).map(([k, x]) => [
        k,
        k === '$ref' && typeof x === 'string' && x.startsWith('#/$defs/')
          ? `#/components/schemas/${prefix}_${x.slice(8)}`
          : rewrite(x),
      ]),
    );
  const rewrite = (v: unknown): unknown => (Array.isArray(v) ? v.map(rewrite) : isJson(v) ? rewriteJson(v) : v);
  for (const [name, def] of Object.entries(isJson($defs) ? $defs : {})) {
    if (isJson(def)) components[`${prefix}_${name}`] = rewriteJson(def);
  }
  return rewriteJson(rest);
}

const isJson = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Sets `value` at `path` inside a schema made above; a path that is not there is a bug here, said so. */
function setIn(root: Json, path: readonly string[], value: Json): void {
  let at = root;
  for (const key of path.slice(0, -1)) {
    const next = at[key];
    if (!isJson(next)) throw new Error(`OpenAPI schema has no object at ${path.join('.')} (stopped at ${key})`);
    at = next;
  }
  at[path[path.length - 1] ?? ''] = value;
}

const schema = (s: z.ZodType): Json => z.toJSONSchema(s, { unrepresentable: 'any', io: 'output' });
const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });

function errors(...statuses: number[]): Record<string, Json> {
  return Object.fromEntries(
    statuses.map((s) => [
      String(s),
      {
        description: `error: ${(API_ERRORS[s] ?? []).join(', ')}`,
        content: { 'application/json': { schema: ref('Error') } },
      },
    ]),
  );
}

const json = (s: Json, description: string): Json => ({ description, content: { 'application/json': { schema: s } } });

/**
 * The OpenAPI 3.1 document of the API as `types` (the job types the caller may use) see it: one
 * enqueue and one batch path per type, each with that type's payload schema.
 */
export function openApiDocument(types: readonly JobType[], options: { maxBatchSize: number; version: string }): Json {
  const paths: Record<string, Json> = {};
  const components: Record<string, Json> = {};
  const common = errors(401, 500, 503);
  for (const t of types) {
    // What a client sends: the input side of the schema (fields with defaults are optional).
    const payload = hoisted(
      z.toJSONSchema(t.payload, { unrepresentable: 'any', io: 'input' }),
      `payload_${t.name.replace(/-/g, '_')}`,
      components,
    );
    paths[`/v1/jobs/${t.name}`] = {
      post: {
        operationId: `enqueue_${t.name.replace(/-/g, '_')}`,
        summary: `Enqueue a ${t.name} job`,
        description: t.description || undefined,
        parameters: [{ name: 'Idempotency-Key', in: 'header', required: false, schema: schema(idempotencyKeySchema) }],
        requestBody: { required: true, content: { 'application/json': { schema: payload } } },
        responses: {
          '202': json(ref('EnqueueResult'), 'enqueued'),
          ...errors(400, 403, 409, 413, 415, 422, 507),
          ...common,
        },
      },
    };
    const batch = hoisted(schema(batchBodySchema(options.maxBatchSize)), 'batch', components);
    setIn(batch, ['properties', 'jobs', 'items', 'properties', 'data'], payload);
    paths[`/v1/jobs/${t.name}/batch`] = {
      post: {
        operationId: `enqueue_batch_${t.name.replace(/-/g, '_')}`,
        summary: `Enqueue ${t.name} jobs, all or nothing`,
        requestBody: { required: true, content: { 'application/json': { schema: batch } } },
        responses: {
          '202': json(
            {
              type: 'object',
              properties: { jobs: { type: 'array', items: ref('EnqueueResult') } },
              required: ['jobs'],
            },
            'all enqueued',
          ),
          ...errors(400, 403, 413, 415, 422, 507),
          ...common,
        },
      },
    };
  }
  const idParam = {
    name: 'id',
    in: 'path',
    required: true,
    schema: { type: 'string', pattern: '^[a-z][a-z0-9-]{0,62}\\.[0-9a-f]{32}$' },
  };
  paths['/v1/jobs/{id}'] = {
    get: {
      operationId: 'getJob',
      summary: 'A job you enqueued (or may read)',
      parameters: [idParam],
      responses: { '200': json(ref('Job'), 'the job'), ...errors(403, 404), ...common },
    },
    delete: {
      operationId: 'cancelJob',
      summary: 'Cancel a job you enqueued',
      parameters: [idParam],
      responses: {
        '200': json(ref('CancelResult'), 'removed from the queue'),
        '202': json(ref('CancelResult'), 'aborting in its sandbox'),
        ...errors(403, 404, 409),
        ...common,
      },
    },
  };
  paths['/v1/job-types'] = {
    get: {
      operationId: 'listJobTypes',
      summary: 'Job types this token may use, with payload schemas',
      responses: {
        '200': json(
          {
            type: 'object',
            properties: { jobTypes: { type: 'array', items: { type: 'object' } } },
            required: ['jobTypes'],
          },
          'job types',
        ),
        ...common,
      },
    },
  };
  paths['/v1/audit'] = {
    get: {
      operationId: 'readAudit',
      summary: 'Secret access audit (admin producers)',
      parameters: [
        { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 10000 } },
        { name: 'since', in: 'query', schema: { type: 'string', pattern: '^[0-9]+(s|m|h|d|w)$' } },
        { name: 'secret', in: 'query', schema: { type: 'string', maxLength: 200 } },
        { name: 'denied', in: 'query', schema: { type: 'string', enum: ['true', 'false'] } },
      ],
      responses: {
        '200': json(
          {
            type: 'object',
            properties: { records: { type: 'array', items: { type: 'object' } } },
            required: ['records'],
          },
          'audit records, newest first',
        ),
        ...errors(400, 403),
        ...common,
      },
    },
  };
  paths['/v1/openapi.json'] = {
    get: {
      operationId: 'openApi',
      summary: 'This document',
      responses: { '200': json({ type: 'object' }, 'the OpenAPI document'), ...common },
    },
  };
  const errorSchema = hoisted(schema(errorEnvelopeSchema), 'error', components);
  setIn(errorSchema, ['properties', 'error', 'properties', 'code'], {
    type: 'string',
    enum: [...new Set(Object.values(API_ERRORS).flat())],
  });
  const strip = (s: z.ZodType, name: string): Json => hoisted(schema(s), name, components);
  return {
    openapi: '3.1.0',
    info: {
      title: 'fleet',
      version: options.version,
      description: 'Enqueue jobs into a fleet of sandboxed workers; read and cancel the jobs you enqueued.',
    },
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: {
        Error: errorSchema,
        EnqueueResult: strip(enqueueResultSchema, 'enqueue_result'),
        Job: strip(jobViewSchema, 'job'),
        CancelResult: strip(cancelResultSchema, 'cancel_result'),
        ...components,
      },
    },
  };
}

/** The first problem zod found (a failed parse always has one), for a one-line error message. */
export function firstIssue(error: z.ZodError): { path: PropertyKey[]; message: string } {
  return error.issues[0] ?? { path: [], message: error.message };
}
