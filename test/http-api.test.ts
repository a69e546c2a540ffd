import { connect } from 'node:net';
import type { Server } from 'node:http';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { FleetConfig } from '../src/config/resolve.js';
import { sha256Hex } from '../src/api/auth.js';
import { listen } from '../src/api/api-server.js';
import { createApiApp } from '../src/api/http-api.js';
import { freePort } from '../src/redis/embedded-redis.js';
import { createHttpClient, FleetHttpError } from '../src/producers/http-client.js';
import { Producer } from '../src/producers/producer.js';
import { FleetEventBus } from '../src/events.js';
import { FleetMetrics } from '../src/observability/metrics.js';
import { fixtureType, guardAgainstLeaks, startSupervisor, testConfig, waitForJob } from './helpers/fleet.js';
import { dumpKeys, startTestRedis } from './helpers/redis.js';

const ADMIN = 'admin-token-0123456789abcdef';
const LIMITED = 'limited-token-0123456789abcdef';
const PEER = 'peer-token-0123456789abcdef01';
/** The token peer is being rotated to: both act as peer meanwhile. */
const PEER_NEXT = 'peer-next-token-0123456789abcdef';
const READER = 'reader-token-0123456789abcdef';

let redis: Awaited<ReturnType<typeof startTestRedis>>;
let config: FleetConfig;
let server: Server;
let base: string;
let producer: Producer;

beforeAll(async () => {
  redis = await startTestRedis();
});
afterAll(async () => {
  await redis?.release();
});
guardAgainstLeaks();

/** A fresh API (own prefix) per test. */
async function startApi(bodyLimitBytes = 10_000): Promise<void> {
  config = testConfig(
    redis.url,
    [
      fixtureType('greet', 'ok.mjs', {
        payloadSchema: z.object({ name: z.string().min(1), times: z.number().int().min(1).max(5).default(1) }),
      }),
      fixtureType('other', 'ok.mjs'),
    ],
    {
      api: { bodyLimitBytes, maxBatchSize: 50 },
      producers: [
        { name: 'admin', tokenSha256: sha256Hex(ADMIN), jobTypes: ['*'] },
        { name: 'limited', tokenSha256: sha256Hex(LIMITED), jobTypes: ['other'] },
        { name: 'peer', tokenSha256: [sha256Hex(PEER), sha256Hex(PEER_NEXT)], jobTypes: ['other'] },
        { name: 'auditor', tokenSha256: sha256Hex(READER), jobTypes: ['other'], read: ['other'] },
      ],
    },
  );
  producer = new Producer({ config, name: 'api' });
  server = await listen(createApiApp({ producer }), '127.0.0.1', 0);
  const addr = server.address() as { port: number };
  base = `http://127.0.0.1:${addr.port}`;
}
afterEach(async () => {
  await new Promise<void>((r) => {
    server.close(() => r());
    server.closeAllConnections();
  });
  await producer.close();
});

async function call(
  method: string,
  path: string,
  opts: { token?: string | null; body?: string; headers?: Record<string, string> } = {},
) {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token !== null) headers.authorization = `Bearer ${opts.token ?? ADMIN}`;
  if (opts.body !== undefined && !('content-type' in headers)) headers['content-type'] = 'application/json';
  const res = await fetch(`${base}${path}`, {
    method,
    headers,
    ...(opts.body !== undefined ? { body: opts.body } : {}),
  });
  const text = await res.text();
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are probed field by field
  return { status: res.status, body: (text ? JSON.parse(text) : null) as Record<string, any> };
}

async function jobCount(): Promise<number> {
  const keys = await dumpKeys(redis.url, `${config.redis.prefix}:*`);
  return [...keys.keys()].filter((k) => /:[a-z]+\.k?[0-9a-f]{32,40}$/.test(k)).length;
}

describe('HTTP API', () => {
  it('enqueues with 202 {id}, then reports the finished job', async () => {
    await startApi();
    await startSupervisor({ config });
    const r = await call('POST', '/v1/jobs/greet', { body: JSON.stringify({ name: 'Ada' }) });
    expect(r.status).toBe(202);
    expect(r.body.id).toMatch(/^greet\.[0-9a-f]{32}$/);
    await waitForJob(producer, r.body.id);
    const j = await call('GET', `/v1/jobs/${r.body.id}`);
    expect(j.status).toBe(200);
    expect(j.body).toMatchObject({
      id: r.body.id,
      type: 'greet',
      state: 'completed',
      attemptsMade: 1,
      result: { got: { name: 'Ada', times: 1 } },
      error: null,
    });
    expect(j.body.timings.durationMs).toBeGreaterThanOrEqual(0);
  });

  it('answers 409 to a request whose Idempotency-Key is still in flight, then the same id once the first is done', async () => {
    await startApi();
    const admin = new Redis(redis.url);
    try {
      // The in-flight marker a first request leaves while it is still being enqueued.
      const { idempotencyInFlightKey } = await import('../src/redis/keys.js');
      const { idempotentJobId } = await import('../src/producers/job-id.js');
      const pendingId = idempotentJobId('other', 'admin', 'in-flight-key');
      await admin.set(idempotencyInFlightKey(config.redis.prefix, 'other', pendingId), '1', 'PX', 5000);
      const second = await call('POST', '/v1/jobs/other', {
        body: '{}',
        headers: { 'idempotency-key': 'in-flight-key' },
      });
      expect(second.status).toBe(409);
      expect(second.body.error.code).toBe('IDEMPOTENCY_KEY_IN_FLIGHT');
      await admin.del(idempotencyInFlightKey(config.redis.prefix, 'other', pendingId));
      const third = await call('POST', '/v1/jobs/other', {
        body: '{}',
        headers: { 'idempotency-key': 'in-flight-key' },
      });
      expect([third.status, third.body.id]).toEqual([202, pendingId]);
    } finally {
      admin.disconnect();
    }
  });

  it("a producer reads and cancels its own jobs; others' are 404 unless a read scope lets it see (not cancel) them", async () => {
    await startApi();
    const mine = await call('POST', '/v1/jobs/other', { body: '{"secret-ish":"data of limited"}', token: LIMITED });
    expect(mine.status).toBe(202);
    const id = mine.body.id as string;
    const own = await call('GET', `/v1/jobs/${id}`, { token: LIMITED });
    expect(own.body).toMatchObject({ id, owner: 'limited' });
    // Another producer of the same type: exactly what an unknown id gets.
    const peer = await call('GET', `/v1/jobs/${id}`, { token: PEER });
    const unknown = await call('GET', `/v1/jobs/other.00000000000000000000000000000000`, { token: PEER });
    expect([peer.status, peer.body.error.code]).toEqual([404, 'JOB_NOT_FOUND']);
    expect(peer.body.error.message.replace(id, 'ID')).toBe(
      unknown.body.error.message.replace('other.00000000000000000000000000000000', 'ID'),
    );
    expect((await call('DELETE', `/v1/jobs/${id}`, { token: PEER })).status).toBe(404);
    // A read scope shows it, but cancelling stays with the owner (or an admin).
    expect((await call('GET', `/v1/jobs/${id}`, { token: READER })).body).toMatchObject({
      id,
      data: { 'secret-ish': 'data of limited' },
    });
    expect((await call('DELETE', `/v1/jobs/${id}`, { token: READER })).status).toBe(403);
    expect((await call('DELETE', `/v1/jobs/${id}`, { token: LIMITED })).status).toBe(200);
  });

  it("a producer's tokens in rotation act as that one producer; an in-process Producer may not take an HTTP producer's name", async () => {
    await startApi();
    const posted = await call('POST', '/v1/jobs/other', { body: '{"n":1}', token: PEER });
    expect(posted.status).toBe(202);
    const id = posted.body.id as string;
    expect((await call('GET', `/v1/jobs/${id}`, { token: PEER_NEXT })).body).toMatchObject({ id, owner: 'peer' });
    expect((await call('GET', `/v1/jobs/${id}`, { token: LIMITED })).status).toBe(404);
    // It would own its jobs together with the HTTP producer "peer", which would read them.
    expect(() => new Producer({ config, name: 'peer' })).toThrow(
      expect.objectContaining({
        code: 'CONFIG_INVALID',
        message: expect.stringContaining(
          'a Producer named "peer" would own its jobs together with the HTTP producer of that name (producers.peer)',
        ),
      }),
    );
  });

  it('refuses an Idempotency-Key reused with a different body (422), also inside one batch, and enqueues nothing', async () => {
    await startApi();
    const h = { 'idempotency-key': 'order-77' };
    const first = await call('POST', '/v1/jobs/greet', { body: JSON.stringify({ name: 'a', times: 1 }), headers: h });
    expect(first.status).toBe(202);
    // The same body in another key order is the same request.
    expect(
      (await call('POST', '/v1/jobs/greet', { body: JSON.stringify({ times: 1, name: 'a' }), headers: h })).body.id,
    ).toBe(first.body.id);
    const other = await call('POST', '/v1/jobs/greet', { body: JSON.stringify({ name: 'b' }), headers: h });
    expect(other.status).toBe(422);
    expect(other.body.error).toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED', details: { jobId: first.body.id } });
    expect(((await producer.getJob(first.body.id as string)).data as { name: string }).name).toBe('a');
    const inBatch = await call('POST', '/v1/jobs/greet/batch', {
      body: JSON.stringify({
        jobs: [
          { data: { name: 'x' }, idempotencyKey: 'k9' },
          { data: { name: 'y' } },
          { data: { name: 'z' }, idempotencyKey: 'k9' },
        ],
      }),
    });
    expect(inBatch.status).toBe(422);
    expect(inBatch.body.error).toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED', details: { index: 2, firstIndex: 0 } });
    const againstStored = await call('POST', '/v1/jobs/greet/batch', {
      body: JSON.stringify({ jobs: [{ data: { name: 'new' } }, { data: { name: 'c' }, idempotencyKey: 'order-77' }] }),
    });
    expect(againstStored.status).toBe(422);
    expect(againstStored.body.error.details).toMatchObject({ index: 1, jobId: first.body.id });
    expect((await producer.queue('greet').getJobCounts('waiting')).waiting).toBe(1);
  });

  it('maps the same Idempotency-Key to the same job id, per producer', async () => {
    await startApi();
    const h = { 'idempotency-key': 'order-42' };
    const a = await call('POST', '/v1/jobs/other', { body: '{}', headers: h });
    const b = await call('POST', '/v1/jobs/other', { body: '{}', headers: h });
    const c = await call('POST', '/v1/jobs/other', { body: '{}', headers: h, token: LIMITED });
    expect(a.status).toBe(202);
    expect(b.body.id).toBe(a.body.id);
    expect(c.body.id).not.toBe(a.body.id);
    expect(a.body.id).not.toContain('order-42');
    expect(await jobCount()).toBe(2);
  });

  it('refuses missing, malformed and unknown tokens with 401', async () => {
    await startApi();
    for (const token of [null, 'short', 'x'.repeat(40)]) {
      const r = await call('POST', '/v1/jobs/greet', { token, body: '{"name":"a"}' });
      expect(r.status).toBe(401);
      expect(r.body.error.code).toBe('UNAUTHENTICATED');
    }
    const bad = await fetch(`${base}/v1/job-types`, { headers: { authorization: 'Basic abc' } });
    expect(bad.status).toBe(401);
    expect(bad.headers.get('www-authenticate')).toContain('Bearer');
    expect(await jobCount()).toBe(0);
  });

  it('refuses a job type the token is not allowed, with 403', async () => {
    await startApi();
    const r = await call('POST', '/v1/jobs/greet', { token: LIMITED, body: '{"name":"a"}' });
    expect(r.status).toBe(403);
    expect(r.body.error.code).toBe('FORBIDDEN');
    expect(r.body.error.message).toContain('producers.limited.jobTypes');
    const types = await call('GET', '/v1/job-types', { token: LIMITED });
    expect(types.body.jobTypes.map((t: { name: string }) => t.name)).toEqual(['other']);
    expect(await jobCount()).toBe(0);
  });

  it('answers each bad request with a precise 4xx and enqueues nothing', async () => {
    await startApi(2000);
    const cases: [string, string, Parameters<typeof call>[2], number, string][] = [
      ['bad JSON', '/v1/jobs/greet', { body: '{"name":' }, 400, 'INVALID_JSON'],
      ['schema mismatch', '/v1/jobs/greet', { body: '{"name":""}' }, 422, 'INVALID_PAYLOAD'],
      ['wrong type', '/v1/jobs/greet', { body: '{"name":"a","times":"3"}' }, 422, 'INVALID_PAYLOAD'],
      ['unknown type', '/v1/jobs/nope', { body: '{}' }, 404, 'UNKNOWN_JOB_TYPE'],
      ['traversal in type', '/v1/jobs/..%2F..%2Fetc', { body: '{}' }, 404, 'UNKNOWN_JOB_TYPE'],
      ['too large', '/v1/jobs/greet', { body: JSON.stringify({ name: 'x'.repeat(5000) }) }, 413, 'PAYLOAD_TOO_LARGE'],
      [
        'not JSON',
        '/v1/jobs/greet',
        { body: 'name=a', headers: { 'content-type': 'text/plain' } },
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      ],
      [
        'bad idempotency key',
        '/v1/jobs/greet',
        { body: '{"name":"a"}', headers: { 'idempotency-key': 'has space' } },
        400,
        'INVALID_REQUEST',
      ],
      ['empty batch', '/v1/jobs/greet/batch', { body: '{"jobs":[]}' }, 400, 'INVALID_REQUEST'],
      [
        'invalid UTF-8',
        '/v1/jobs/greet',
        {
          body: Buffer.from([
            0x7b, 0x22, 0x6e, 0x61, 0x6d, 0x65, 0x22, 0x3a, 0x22, 0xff, 0xc0, 0x22, 0x7d,
          ]) as unknown as string,
        },
        400,
        'INVALID_JSON',
      ],
    ];
    for (const [what, path, opts, status, code] of cases) {
      const r = await call('POST', path, opts);
      expect(r.status, what).toBe(status);
      expect(r.body.error.code, what).toBe(code);
      expect(typeof r.body.error.message, what).toBe('string');
    }
    const invalid = await call('POST', '/v1/jobs/greet', { body: '{"name":""}' });
    expect(invalid.body.error.details.issues[0]).toMatchObject({ path: 'name' });
    const unknownJob = await call('GET', '/v1/jobs/greet.00000000000000000000000000000000');
    expect(unknownJob.status).toBe(404);
    expect(unknownJob.body.error.code).toBe('JOB_NOT_FOUND');
    const junkId = await call('GET', '/v1/jobs/not-an-id');
    expect(junkId.status).toBe(404);
    expect(await jobCount()).toBe(0);
  });

  it('enqueues a batch atomically: one invalid item rejects all of them', async () => {
    await startApi();
    const bad = await call('POST', '/v1/jobs/greet/batch', {
      body: JSON.stringify({ jobs: [{ data: { name: 'a' } }, { data: { name: 7 } }] }),
    });
    expect(bad.status).toBe(422);
    expect(bad.body.error.details.items).toEqual([expect.objectContaining({ index: 1 })]);
    expect(await jobCount()).toBe(0);
    const tooMany = await call('POST', '/v1/jobs/greet/batch', {
      body: JSON.stringify({ jobs: Array.from({ length: 51 }, () => ({ data: { name: 'a' } })) }),
    });
    expect(tooMany.status).toBe(400);
    expect(tooMany.body.error.message).toContain('maxBatchSize=50');
    const ok = await call('POST', '/v1/jobs/greet/batch', {
      body: JSON.stringify({ jobs: [{ data: { name: 'a' } }, { data: { name: 'b' }, idempotencyKey: 'k1' }] }),
    });
    expect(ok.status).toBe(202);
    expect(ok.body.jobs).toHaveLength(2);
    expect(await jobCount()).toBe(2);
  });

  it('cancels a waiting job with DELETE, and answers 409 for a finished one', async () => {
    await startApi();
    const r = await call('POST', '/v1/jobs/other', { body: '{}' });
    const del = await call('DELETE', `/v1/jobs/${r.body.id}`);
    expect(del.status).toBe(200);
    expect(del.body).toMatchObject({ outcome: 'removed', previousState: 'waiting' });
    expect((await call('GET', `/v1/jobs/${r.body.id}`)).status).toBe(404);

    await startSupervisor({ config });
    const done = await call('POST', '/v1/jobs/other', { body: '{}' });
    await waitForJob(producer, done.body.id);
    const again = await call('DELETE', `/v1/jobs/${done.body.id}`);
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe('JOB_FINISHED');
  });

  it('lists job types with their JSON Schema', async () => {
    await startApi();
    const r = await call('GET', '/v1/job-types');
    const greet = r.body.jobTypes.find((t: { name: string }) => t.name === 'greet');
    expect(greet.payloadSchema).toMatchObject({
      type: 'object',
      properties: { name: { type: 'string', minLength: 1 } },
    });
    expect(greet).toMatchObject({ isolation: 'job', sensitivity: 'routine', timeoutMs: 5000 });
  });

  it('serves /healthz and /readyz without auth', async () => {
    await startApi();
    expect((await call('GET', '/healthz', { token: null })).body).toEqual({ status: 'ok' });
    expect((await call('GET', '/readyz', { token: null })).body).toMatchObject({ status: 'ready' });
  });

  it('the HTTP client enqueues, reads and reports errors with their codes', async () => {
    await startApi();
    await startSupervisor({ config });
    const client = createHttpClient({ baseUrl: base, token: ADMIN });
    const { id } = await client.enqueue('greet', { name: 'Lin' }, { idempotencyKey: 'c-1' });
    expect((await client.enqueue('greet', { name: 'Lin' }, { idempotencyKey: 'c-1' })).id).toBe(id);
    await waitForJob(producer, id);
    expect(await client.getJob(id)).toMatchObject({ state: 'completed' });
    const err = await client.enqueue('greet', { name: 3 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FleetHttpError);
    expect(err).toMatchObject({ status: 422, code: 'INVALID_PAYLOAD' });
    const batch = await client.enqueueBatch('other', [{ data: {} }, { data: {} }]);
    expect(batch).toHaveLength(2);
  });
});

describe('deeply nested bodies', () => {
  it('answers 400 PAYLOAD_TOO_DEEP before parsing, for any-JSON and schema types alike; the limit itself is accepted', async () => {
    await startApi(200_000);
    const nest = (n: number): string => '['.repeat(n) + ']'.repeat(n);
    for (const type of ['other', 'greet']) {
      const deep = await call('POST', `/v1/jobs/${type}`, { body: nest(3000) });
      expect(deep.status, type).toBe(400);
      expect(deep.body.error.code).toBe('PAYLOAD_TOO_DEEP');
      expect(deep.body.error.message).toContain('api.maxJsonDepth=100');
    }
    // Brackets inside strings are not nesting.
    expect((await call('POST', '/v1/jobs/other', { body: JSON.stringify({ s: '['.repeat(5000) }) })).status).toBe(202);
    expect((await call('POST', '/v1/jobs/other', { body: nest(100) })).status).toBe(202);
    expect((await call('POST', '/v1/jobs/other', { body: nest(101) })).status).toBe(400);
  });
});

describe('when Redis is full', () => {
  it('answers 503 REDIS_UNAVAILABLE with Retry-After when Redis is down, telling the client nothing of its address or settings', async () => {
    // A port nothing listens on: connecting is refused, and the producer keeps retrying.
    const port = await freePort();
    const dead = testConfig(`redis://127.0.0.1:${port}`, [fixtureType('greet', 'ok.mjs')], {
      producers: [{ name: 'admin', tokenSha256: sha256Hex(ADMIN), jobTypes: ['*'] }],
    });
    const down = new Producer({ config: dead, name: 'api' });
    const app = await listen(createApiApp({ producer: down }), '127.0.0.1', 0);
    try {
      const url = `http://127.0.0.1:${(app.address() as { port: number }).port}/v1/jobs/greet`;
      const r = await fetch(url, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'x' }),
      });
      expect(r.status).toBe(503);
      expect(r.headers.get('retry-after')).toBe('1');
      const text = await r.text();
      expect(JSON.parse(text)).toEqual({
        error: { code: 'REDIS_UNAVAILABLE', message: expect.stringMatching(/job store is unavailable.*Retry later/) },
      });
      expect(text).not.toContain(String(port));
      expect(text).not.toMatch(/REDIS_URL|127\.0\.0\.1|ECONNREFUSED/);
    } finally {
      await new Promise<void>((r) => {
        app.close(() => r());
        app.closeAllConnections();
      });
      await down.close();
    }
  });

  it('answers 507 REDIS_FULL naming what is full and what frees it (not a retryable 503), counts it, and enqueues nothing', async () => {
    await startApi();
    const admin = new Redis(redis.url);
    const used = Number(/used_memory:(\d+)/.exec(await admin.info('memory'))![1]);
    await admin.config('SET', 'maxmemory-policy', 'noeviction');
    await admin.config('SET', 'maxmemory', String(Math.max(1, used - 1024)));
    try {
      const r = await call('POST', '/v1/jobs/greet', { body: JSON.stringify({ name: 'x' }) });
      expect(r.status).toBe(507);
      const body = r.body as { error: { code: string; message: string } };
      expect(body.error.code).toBe('REDIS_FULL');
      expect(body.error.message).toMatch(/Redis is full.*maxmemory.*retrying will not help.*keepCompletedSeconds/);
      // The same refusal through the TypeScript client's path, counted for the FleetRedisFull alert.
      const events = new FleetEventBus();
      const metrics = new FleetMetrics({ defaultMetrics: false });
      metrics.attach(events);
      const direct = new Producer({ config, events });
      await expect(direct.enqueue('greet', { name: 'y' })).rejects.toMatchObject({
        code: 'REDIS_FULL',
        retryable: false,
      });
      await direct.close();
      expect(await metrics.registry.getSingleMetricAsString('fleet_redis_full_total')).toContain(
        'fleet_redis_full_total{operation="enqueue"} 1',
      );
    } finally {
      await admin.config('SET', 'maxmemory', '0');
      admin.disconnect();
    }
    expect((await producer.queue('greet').getJobCounts('waiting')).waiting).toBe(0);
  });
});

describe('requests the HTTP parser refuses', () => {
  /** Writes raw bytes to the API and returns what comes back before the server closes. */
  const raw = (bytes: string | Buffer): Promise<string> =>
    new Promise((resolve, reject) => {
      const { port } = server.address() as { port: number };
      const sock = connect(port, '127.0.0.1', () => sock.write(bytes));
      let out = '';
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => (out += d));
      sock.on('end', () => resolve(out));
      sock.on('error', reject);
    });

  it('answers bytes that are not HTTP at all with a JSON 400 and closes', async () => {
    await startApi();
    const answer = await raw('\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage, e.g. a TLS hello\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(answer).toContain('Connection: close');
    expect(JSON.parse(answer.split('\r\n\r\n')[1]!)).toMatchObject({ error: { code: 'BAD_HTTP_REQUEST' } });
  });

  it('answers oversized headers with 431 even while the client is still sending a large body', async () => {
    await startApi();
    const head = `POST /v1/jobs/greet HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\nContent-Type: application/json\r\nX-Junk: ${'y'.repeat(20_000)}\r\nContent-Length: 70000\r\n\r\n`;
    const answer = await raw(Buffer.concat([Buffer.from(head), Buffer.alloc(70_000, 0x78)]));
    expect(answer).toMatch(/^HTTP\/1\.1 431 /);
    expect(JSON.parse(answer.split('\r\n\r\n')[1]!)).toMatchObject({ error: { code: 'HEADERS_TOO_LARGE' } });
  });
});
