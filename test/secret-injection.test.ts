/**
 * Secrets injected at egress, end to end: real supervisors, process sandboxes, the egress proxy
 * terminating TLS with the fleet CA, and two loopback HTTPS servers with a test CA of their own
 * standing in for the bound service and an unbound one. Includes the hostile attempts on an
 * injected secret (other host, query string, the proxy's CA key, a replayed placeholder, raw IPC).
 */
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { FleetEventBus } from '../src/events.js';
import { FleetMetrics } from '../src/observability/metrics.js';
import { readAudit } from '../src/secrets/audit.js';
import { EgressCa } from '../src/workers/egress-ca.js';
import { fixtureType, makeProducer, startSupervisor, testConfig, waitForJob, localStore } from './helpers/fleet.js';
import { afterAll, beforeAll, describe, expect, it, type TestRedis } from './helpers/fixture.js';

const TOKEN = 'sk-live-injected-0123456789abcdef';
const BODY_TOKEN = 'body-token-fedcba9876543210';

interface Seen {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}
/** A loopback HTTPS service of the test CA; it echoes the Authorization header back (an API that does is the masking case). */
async function service(pem: {
  key: string;
  cert: string;
}): Promise<{ server: https.Server; port: number; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = https.createServer(pem, (req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      seen.push({ method: req.method ?? '', path: req.url ?? '', headers: req.headers, body });
      res.setHeader('x-echo', String(req.headers.authorization ?? ''));
      const answer = (): void => void res.end(JSON.stringify({ youSent: req.headers.authorization ?? null, body }));
      // `/slow`: the answer comes after the job that asked has ended (pool isolation keeps the sandbox).
      if (req.url?.startsWith('/slow')) setTimeout(answer, 1500);
      else answer();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { server, port: (server.address() as AddressInfo).port, seen };
}

let bound: Awaited<ReturnType<typeof service>>;
let unbound: Awaited<ReturnType<typeof service>>;
let testCa: EgressCa;
beforeAll(async () => {
  testCa = await EgressCa.load(mkdtempSync(path.join(tmpdir(), 'fleet-test-ca-')));
  const pem = await testCa.leafPem('127.0.0.1');
  bound = await service(pem);
  unbound = await service(pem);
});
afterAll(() => {
  bound?.server.close();
  unbound?.server.close();
});

function injectConfig(redis: TestRedis, extra: { isolation?: 'job' | 'pool' } = {}): ReturnType<typeof testConfig> {
  const b = `127.0.0.1:${bound.port}`;
  return testConfig(
    redis.url,
    [
      fixtureType('caller', 'inject-client.mjs', {
        secrets: ['api-token', 'body-token'],
        egress: [b, `127.0.0.1:${unbound.port}`],
        isolation: extra.isolation ?? 'pool',
        timeoutMs: 10_000,
      }),
    ],
    {
      supervisor: { metricsPort: 0, heartbeatMs: 500, shutdownDeadlineMs: 2000, upstreamCaFile: testCa.certFile },
      secrets: {
        items: {
          'api-token': { binding: { hosts: [b] } },
          'body-token': { binding: { hosts: [b], header: 'x-api-key', format: '{value}', body: true } },
        },
      },
    },
  );
}

async function withFleet<T>(
  redis: TestRedis,
  fn: (ctx: {
    run: (data: Record<string, unknown>) => Promise<Record<string, unknown> & { jobId: string }>;
    config: ReturnType<typeof injectConfig>;
    events: FleetEventBus;
    metrics: FleetMetrics;
  }) => Promise<T>,
  isolation: 'job' | 'pool' = 'pool',
): Promise<T> {
  const config = injectConfig(redis, { isolation });
  const store = localStore(config.dataDir, 2);
  await store.write('api-token', Buffer.from(TOKEN));
  await store.write('body-token', Buffer.from(BODY_TOKEN));
  const events = new FleetEventBus();
  const metrics = new FleetMetrics({ defaultMetrics: false });
  metrics.attach(events);
  await startSupervisor({ config, events });
  const producer = makeProducer(config);
  const run = async (data: Record<string, unknown>): Promise<Record<string, unknown> & { jobId: string }> => {
    const job = await waitForJob(producer, (await producer.enqueue('caller', data)).id);
    expect(job.state, JSON.stringify(job.error)).toBe('completed');
    return { ...(job.result as Record<string, unknown>), jobId: job.id };
  };
  return fn({ run, config, events, metrics });
}

const boundUrl = (): string => `https://127.0.0.1:${bound.port}/v1/charges`;
const unboundUrl = (): string => `https://127.0.0.1:${unbound.port}/collect`;

describe('secrets injected at egress', () => {
  it('the bound service receives the real value; the sandbox holds only a placeholder, and the echoed value comes back masked', async ({
    redis,
  }) => {
    await withFleet(redis, async ({ run, config, metrics }) => {
      const before = bound.seen.length;
      const r = await run({ url: boundUrl(), where: 'header' });
      expect(r.status).toBe(200);
      expect(r.placeholder).toMatch(/^fleet-ph-[0-9a-f]{40}$/);
      expect(r.getError).toBe('SECRET_SCOPE');
      const got = bound.seen.slice(before);
      expect(got).toHaveLength(1);
      expect(got[0]!.headers.authorization).toBe(`Bearer ${TOKEN}`);
      // The service echoed the value back in a header and the body: the sandbox saw the placeholder.
      expect(r.echoHeader).toBe(`Bearer ${r.placeholder}`);
      expect(r.text).toContain(String(r.placeholder));
      expect(JSON.stringify(r)).not.toContain(TOKEN);
      const audit = await readAudit(redis.client, config.redis.prefix, { secret: 'api-token' });
      expect(audit.find((a) => a.action === 'inject')).toMatchObject({
        outcome: 'granted',
        jobId: r.jobId,
        jobType: 'caller',
        reason: `127.0.0.1:${bound.port}`,
      });
      expect(await metrics.registry.getSingleMetricAsString('fleet_secret_injections_total')).toMatch(
        /job_type="caller",secret="api-token"\} 1/,
      );
    });
  });

  it('in the body only where the binding allows it; a secret in its own header and format', async ({ redis }) => {
    await withFleet(redis, async ({ run }) => {
      const before = bound.seen.length;
      const ok = await run({ url: boundUrl(), where: 'body', secret: 'body-token' });
      expect(ok.status).toBe(200);
      expect(bound.seen.slice(before).map((s) => s.body)).toEqual([JSON.stringify({ key: BODY_TOKEN })]);
      const header = await run({
        url: boundUrl(),
        where: 'header',
        secret: 'body-token',
        header: 'x-api-key',
        format: '{value}',
      });
      expect(header.status).toBe(200);
      expect(bound.seen.at(-1)!.headers['x-api-key']).toBe(BODY_TOKEN);
      const n = bound.seen.length;
      const refused = await run({ url: boundUrl(), where: 'body', secret: 'api-token' });
      expect(refused).toMatchObject({ status: 403, refused: 'refused' });
      expect(refused.text).toMatch(/in the request body, which its binding does not allow/);
      const wrongFormat = await run({ url: boundUrl(), where: 'header', format: 'Token {value}' });
      expect(wrongFormat.status).toBe(403);
      expect(bound.seen.length).toBe(n);
    });
  });

  it("the sandbox's memory, read from outside during the job, never holds the value; it does hold the placeholder", async ({
    redis,
  }) => {
    await withFleet(redis, async ({ config }) => {
      const producer = makeProducer(config);
      const before = bound.seen.length;
      const { id } = await producer.enqueue('caller', { url: boundUrl(), where: 'header', holdMs: 2500 });
      // Wait until the request went out (the bound service saw it), then read the sandbox's memory.
      await expect
        .poll(() => bound.seen.length, { timeout: 5000, message: 'the bound service to see the request' })
        .toBeGreaterThan(before);
      const pids = sandboxPids();
      expect(pids.length).toBeGreaterThan(0);
      const placeholder = (await producer.getJob(id)).state === 'completed' ? null : undefined;
      let sawPlaceholder = false;
      for (const pid of pids) {
        const mem = readMemory(pid);
        expect(mem.indexOf(Buffer.from(TOKEN)), `value found in sandbox ${pid}'s memory`).toBe(-1);
        if (/fleet-ph-[0-9a-f]{40}/.test(mem.toString('latin1'))) sawPlaceholder = true;
      }
      // The scan does see the job's data: it would have found the value had it been there.
      expect(sawPlaceholder).toBe(true);
      expect(placeholder).toBeUndefined();
      expect((await waitForJob(producer, id)).state).toBe('completed');
    });
  });
});

describe('operators see the modes', () => {
  it("fleet status --secrets shows each secret's mode per type and its binding; fleet doctor warns about a delivered secret that has a binding", async ({
    redis,
  }) => {
    const { secretsStatus, renderSecretsStatus } = await import('../src/cli/secrets-commands.js');
    const { doctor } = await import('../src/cli/doctor/doctor.js');
    const b = `127.0.0.1:${bound.port}`;
    const config = testConfig(
      redis.url,
      [
        fixtureType('caller', 'inject-client.mjs', { secrets: ['api-token'], egress: [b] }),
        fixtureType('legacy', 'inject-client.mjs', { secrets: [{ name: 'api-token', mode: 'deliver' }], egress: [b] }),
      ],
      { secrets: { items: { 'api-token': { binding: { hosts: [b] } } } } },
    );
    const rows = await secretsStatus(config, redis.client);
    expect(rows.find((r) => r.secret === 'api-token')).toMatchObject({
      modes: { caller: 'inject', legacy: 'deliver' },
      binding: { hosts: [b], header: 'authorization', format: 'Bearer {value}', body: false },
    });
    expect(renderSecretsStatus(rows)).toMatch(
      /used by caller \(inject\), legacy \(deliver\)\n\s+binding: 127\.0\.0\.1:\d+  authorization: Bearer \{value\}/,
    );
    const checks = await doctor(config, redis.client, { production: false, metricsUrls: [] });
    expect(checks.find((c) => c.check === 'job type legacy: secret api-token mode')).toMatchObject({
      status: 'WARN',
      detail: expect.stringContaining('delivered into the sandbox although it has a binding'),
    });
    expect(checks.find((c) => c.check === 'job type caller: secret api-token mode')).toMatchObject({ status: 'PASS' });
  });
});

describe('hostile: a processor misusing an injected secret', () => {
  it('cannot send it to an allowed but unbound host: refused, audited, counted; the host receives nothing', async ({
    redis,
  }) => {
    await withFleet(redis, async ({ run, config, metrics }) => {
      const r = await run({ url: unboundUrl(), where: 'header' });
      expect(r).toMatchObject({ status: 403, refused: 'refused' });
      expect(r.text).toMatch(/"api-token" is bound to 127\.0\.0\.1:\d+, not 127\.0\.0\.1:\d+/);
      expect(unbound.seen).toHaveLength(0);
      const audit = await readAudit(redis.client, config.redis.prefix, { secret: 'api-token' });
      expect(audit.find((a) => a.action === 'inject-refused')).toMatchObject({
        outcome: 'denied',
        jobId: r.jobId,
        jobType: 'caller',
        reason: expect.stringContaining(`127.0.0.1:${unbound.port}`),
      });
      expect(await metrics.registry.getSingleMetricAsString('fleet_secret_injection_refused_total')).toMatch(
        /job_type="caller",secret="api-token"\} 1/,
      );
    });
  });

  it('cannot put the placeholder in a query string, another header, or a plain-HTTP request', async ({ redis }) => {
    await withFleet(redis, async ({ run }) => {
      const n = bound.seen.length;
      const query = await run({ url: boundUrl(), where: 'query' });
      expect(query.status).toBe(403);
      expect(query.text).toMatch(/in the URL/);
      const other = await run({ url: boundUrl(), where: 'header', header: 'x-forwarded-token' });
      expect(other.status).toBe(403);
      expect(other.text).toMatch(/in header x-forwarded-token; it may only be sent in authorization/);
      const plain = await run({ url: `http://127.0.0.1:${unbound.port}/`, where: 'header' });
      expect(plain.status).toBe(403);
      expect(plain.text).toMatch(/only over https/);
      expect(bound.seen.length).toBe(n);
    });
  });

  it('cannot replay a placeholder after its job, in job isolation too (job 1 to job 2)', async ({ redis }) => {
    for (const isolation of ['pool', 'job'] as const) {
      await withFleet(
        redis,
        async ({ run, config }) => {
          const first = await run({ url: boundUrl(), where: 'header' });
          expect(first.status).toBe(200);
          const n = bound.seen.length;
          const replay = await run({ url: boundUrl(), where: 'header', placeholder: first.placeholder });
          expect(replay.status).toBe(403);
          expect(replay.text).toMatch(
            new RegExp(`placeholder of job ${String(first.jobId).replace('.', '\\.')}, which has ended \\(a replay\\)`),
          );
          expect(bound.seen.length).toBe(n);
          const audit = await readAudit(redis.client, config.redis.prefix, { secret: 'api-token' });
          expect(audit.some((a) => a.action === 'inject-refused' && a.jobId === replay.jobId)).toBe(true);
        },
        isolation,
      );
    }
  });

  it('cannot send the value inside the tunnel to another Host or an absolute-form URL: refused, audited as exfiltration', async ({
    redis,
  }) => {
    await withFleet(redis, async ({ run, config }) => {
      const n = bound.seen.length;
      const host = await run({ url: boundUrl(), hostHeader: 'internal-admin.example' });
      expect(host.status).toBe(403);
      expect(host.text).toMatch(
        /Host: internal-admin\.example inside a tunnel to 127\.0\.0\.1:\d+ \(a possible exfiltration\)/,
      );
      const absolute = await run({ url: boundUrl(), absolutePath: 'https://internal-admin.example/steal' });
      expect(absolute.status).toBe(403);
      expect(absolute.text).toMatch(/a request for internal-admin\.example:443 inside a tunnel/);
      expect(bound.seen.length).toBe(n);
      // The same request with the tunnel's own Host goes through.
      const own = await run({ url: boundUrl(), hostHeader: `127.0.0.1:${bound.port}` });
      expect(own.status).toBe(200);
      const audit = await readAudit(redis.client, config.redis.prefix, { deniedOnly: true });
      for (const r of [host, absolute])
        expect(audit.some((a) => a.action === 'inject-refused' && a.jobId === r.jobId)).toBe(true);
    });
  });

  it('a response that arrives after its job ended never reaches the sandbox (pool isolation): the exchange is cut at job end', async ({
    redis,
  }) => {
    await withFleet(
      redis,
      async ({ run }) => {
        const fired = await run({ url: `https://127.0.0.1:${bound.port}/slow`, fireLate: true });
        expect(fired).toMatchObject({ fired: true });
        // The next job of the same sandbox reads whatever came back for the first one.
        const next = await run({ readLate: 3000 });
        expect(String(next.late)).not.toContain(TOKEN);
        expect(String(next.late)).toMatch(/^error: /);
      },
      'pool',
    );
  });

  it("cannot read the proxy's CA key, and cannot get the value over the raw IPC channel", async ({ redis }) => {
    await withFleet(redis, async ({ run, config }) => {
      const key = path.join(config.dataDir, 'egress-ca', 'ca.key');
      expect(readFileSync(key, 'utf8')).toContain('PRIVATE KEY');
      const r = await run({ readFile: key });
      expect(r.readFile).not.toBe('read');
      const ipc = await run({ rawIpc: true, secret: 'api-token' });
      expect(ipc.rawIpc).toEqual({ ok: false, code: 'SECRET_SCOPE' });
      const audit = await readAudit(redis.client, config.redis.prefix, { secret: 'api-token', deniedOnly: true });
      expect(audit.some((a) => a.reason === 'SECRET_INJECT_ONLY' && a.jobId === ipc.jobId)).toBe(true);
    });
  });
});

/** Sandbox processes (node running the sandbox entry) below this test process. */
function sandboxPids(): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8');
      if (!cmd.includes('sandbox-entry') || cmd.startsWith('bwrap') || cmd.includes('/bwrap')) continue;
      let pid = Number(d);
      for (let i = 0; i < 10 && pid > 1; i++) {
        pid = Number(/PPid:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
        if (pid === process.pid) {
          out.push(Number(d));
          break;
        }
      }
    } catch {
      // gone
    }
  }
  return out;
}

/** Every readable mapping of a process, from outside (root may read /proc/<pid>/mem). */
function readMemory(pid: number): Buffer {
  const parts: Buffer[] = [];
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  try {
    for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) r/.exec(line);
      if (!m || line.includes('[vvar]') || line.includes('[vsyscall]')) continue;
      const start = Number.parseInt(m[1]!, 16);
      const len = Number.parseInt(m[2]!, 16) - start;
      if (len > 256 * 1024 * 1024) continue;
      const buf = Buffer.alloc(len);
      try {
        readSync(fd, buf, 0, len, start);
        parts.push(buf);
      } catch {
        // unreadable mapping
      }
    }
  } finally {
    closeSync(fd);
  }
  return Buffer.concat(parts);
}
