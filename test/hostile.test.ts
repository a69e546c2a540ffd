/**
 * The hostile-processor suite (`npm run test:hostile`; also part of `npm test`). A processor that
 * attacks its boundary, one attack per job, run in process sandboxes with the OS layer on (when
 * this machine has it; skipped loudly otherwise) and off. Each test asserts the attempt failed and
 * the reason it failed (the refusal's code, errno or status: an attack that broke for any other
 * reason fails its test), or exactly the weaker guarantee docs/security.md states for a sandbox without
 * the OS layer.
 */
import { mkdtempSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Sandbox } from '../src/workers/sandbox.js';
import {
  PERMISSION_MODEL_COVERS_NETWORK,
  probeOsLayer,
  type Egress,
  type OsLayer,
} from '../src/workers/sandbox-boundary.js';
import type { EgressRefusal } from '../src/workers/egress-proxy.js';
import { readAudit } from '../src/secrets/audit.js';
import { FleetMetrics } from '../src/observability/metrics.js';
import { FleetEventBus } from '../src/events.js';
import {
  FIXTURES,
  fixtureType,
  makeProducer,
  osLayerOff,
  processSandbox,
  startSupervisor,
  testConfig,
  until,
  waitForJob,
  localStore,
} from './helpers/fleet.js';
import { awaitNext } from './helpers/wait.js';
import { afterAll, beforeAll, describe, expect, it } from './helpers/fixture.js';

const ATTACK = path.join(FIXTURES, 'hostile', 'attack.mjs');
const osLayer = await probeOsLayer('auto');
if (!osLayer.available) console.warn(`SKIPPING the OS-layer half of the hostile suite: ${osLayer.reason}`);
else console.info('hostile suite: OS layer (bubblewrap namespaces) available; running with it on and off');
const OFF = osLayerOff();
/** The supervisor's own credential, planted in its environment and heap for the sandbox to look for. */
const SENTINEL = `supervisor-credential-${process.pid}-7c1d9e`;
process.env.FLEET_HOSTILE_SENTINEL = SENTINEL;
const heapCopy = Buffer.from(`${SENTINEL} kept in the supervisor heap`);

let metadata: http.Server;
let metadataPort: number;
beforeAll(async () => {
  // A loopback HTTP server standing in for a cloud metadata endpoint (credentials on GET).
  metadata = http.createServer((_q, s) => s.end('{"AccessKeyId":"ASIA-STAND-IN","SecretAccessKey":"metadata-secret"}'));
  await new Promise<void>((r) => metadata.listen(0, '127.0.0.1', () => r()));
  metadataPort = (metadata.address() as net.AddressInfo).port;
});
afterAll(() => {
  metadata?.close();
  heapCopy.fill(0);
});

/** What test/fixtures/hostile/attack.mjs reports: `reason` is null when the attack got through. */
interface Outcome {
  attack: string;
  achieved: boolean;
  reason: string | null;
  detail: string;
}

/**
 * Asserts the attack failed, and failed for `reason` (exactly, or matching a pattern): a refusal
 * of another kind, or an exception from a bug in the attack, fails the test.
 */
function expectRefused(r: Outcome, reason: string | RegExp): void {
  expect(r.achieved, `${r.attack} got through: ${r.detail}`).toBe(false);
  if (typeof reason === 'string') expect(r.reason, `${r.attack}: ${r.detail}`).toBe(reason);
  else expect(r.reason, `${r.attack}: ${r.detail}`).toMatch(reason);
}

/** The permission model's refusal of a file read (its error names the scope it checked). */
const READ_DENIED = 'ERR_ACCESS_DENIED FileSystemRead';
/**
 * A fetch through the proxy that refused it: Node 26 sends http:// URLs to the proxy in absolute
 * form and gets its 403; Node 22/24 (undici) open a CONNECT tunnel and report the refused tunnel
 * as an aborted request.
 */
const FETCH_REFUSED = /^(HTTP 403|UND_ERR_ABORTED)$/;

async function attack(
  layer: OsLayer,
  data: Record<string, unknown>,
  opts: { egress?: Egress; tmpSizeMb?: number; onRefused?: (r: EgressRefusal) => void } = {},
): Promise<Outcome> {
  const sb = await Sandbox.start(
    processSandbox(
      ATTACK,
      layer,
      {
        egress: opts.egress ?? 'none',
        tmpSizeMb: opts.tmpSizeMb ?? 4,
        ...(opts.onRefused ? { onEgressRefused: opts.onRefused } : {}),
      },
      { jobType: 'hostile', maxResultBytes: 100_000, nice: 10 },
    ),
  );
  try {
    const r = await sb.run(
      { type: 'run', jobId: 'hostile.1', jobType: 'hostile', attempt: 1, data, secretNames: [], secrets: [] },
      { timeoutMs: 10_000, abortGraceMs: 200 },
    );
    return JSON.parse(r.resultJson) as Outcome;
  } finally {
    await sb.destroy();
  }
}

const modes: [string, OsLayer][] = [
  ['OS layer on', osLayer],
  ['OS layer off (permission model only)', OFF],
];

describe.each(modes)('a hostile processor, %s', (mode, layer) => {
  const on = layer.available;
  const skip = mode.startsWith('OS layer on') && !on;

  it.skipIf(skip)("runs below the supervisor's CPU priority and cannot raise it back", async () => {
    const r = await attack(layer, { attack: 'raise-priority' });
    expect(r.detail).toMatch(/^nice 10/);
    // Raising a priority needs CAP_SYS_NICE: the OS layer drops every capability, and without it a
    // root supervisor starts its sandboxes as uid 65534.
    expectRefused(r, 'EACCES');
  });

  it.skipIf(skip)('cannot read the supervisor credentials from any /proc/<pid>/environ', async () => {
    const r = await attack(layer, { attack: 'proc-environ', sentinel: SENTINEL });
    expectRefused(r, READ_DENIED);
  });

  it.skipIf(skip)("cannot read the supervisor's memory through /proc/<ppid>/mem", async () => {
    const r = await attack(layer, { attack: 'parent-memory', sentinel: SENTINEL });
    expectRefused(r, READ_DENIED);
  });

  it.skipIf(skip)(
    "cannot read the data dir (local store's master key, dev token) nor files beside its processor tree",
    async () => {
      const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-hostile-data-'));
      writeFileSync(path.join(dataDir, 'master.key'), 'k'.repeat(44), { mode: 0o600 });
      const disk = await attack(layer, { attack: 'read-data-dir', dataDir });
      // With the OS layer the data dir is not even mounted in the sandbox's namespace.
      expectRefused(disk, on ? 'ENOENT' : READ_DENIED);
      const outside = await attack(layer, {
        attack: 'read-outside',
        file: path.join(FIXTURES, '..', '..', 'package.json'),
      });
      // With the OS layer a checkout under /tmp is not even visible (the sandbox's /tmp is its own):
      // then the refusal is ENOENT; elsewhere the permission model's.
      expectRefused(outside, on ? /^(ENOENT|ERR_ACCESS_DENIED FileSystemRead)$/ : READ_DENIED);
      rmSync(dataDir, { recursive: true, force: true });
    },
  );

  it.skipIf(skip)(
    'cannot signal the supervisor (SIGUSR1 would open its inspector, SIGKILL would end every job)',
    async () => {
      let got = 0;
      const count = (): void => void got++;
      process.on('SIGUSR2', count);
      try {
        const r = await attack(layer, { attack: 'signal-supervisor', signal: 'SIGUSR2' });
        expectRefused(r, 'ERR_ACCESS_DENIED');
        expect(r.detail).toContain('process.kill is not available in a fleet sandbox');
        // SIGKILL too: if this got through, this test process (the supervisor) would be dead.
        expectRefused(await attack(layer, { attack: 'signal-supervisor', signal: 'SIGKILL' }), 'ERR_ACCESS_DENIED');
        // No event to wait for: the claim is that no SIGUSR2 arrives, so this gives a signal that
        // got through (delivered within microseconds) ample time to be counted.
        await new Promise((r) => setTimeout(r, 100));
        expect(got).toBe(0);
      } finally {
        process.off('SIGUSR2', count);
      }
    },
  );

  it.skipIf(skip)(
    'cannot open an inspector, spawn a process, start a worker, fork-bomb, load a native addon or use WASI',
    async () => {
      for (const [a, reason] of [
        ['inspector', 'ERR_ACCESS_DENIED Inspector'],
        ['spawn', 'ERR_ACCESS_DENIED ChildProcess'],
        ['worker', 'ERR_ACCESS_DENIED WorkerThreads'],
        ['fork-bomb', 'ERR_ACCESS_DENIED ChildProcess'],
        ['addon', 'ERR_DLOPEN_DISABLED'],
        ['wasi', 'ERR_ACCESS_DENIED WASI'],
      ] as const)
        expectRefused(await attack(layer, { attack: a }), reason);
    },
  );

  it.skipIf(skip)('cannot write into its processor directory to poison later jobs', async () => {
    const r = await attack(layer, { attack: 'write-processor-dir' });
    // The permission model refuses it, or (OS layer, a checkout under /tmp) the read-only bind mount.
    expectRefused(r, on ? /^(ERR_ACCESS_DENIED FileSystemWrite|EROFS)$/ : 'ERR_ACCESS_DENIED FileSystemWrite');
    expect(existsSync(path.join(FIXTURES, 'hostile', 'poisoned.mjs'))).toBe(false);
  });

  it.skipIf(skip)('leaves nothing in its temp dir for the next job', async () => {
    expect((await attack(layer, { attack: 'leave-file', phase: 'write' })).achieved).toBe(true);
    const next = await attack(layer, { attack: 'leave-file', phase: 'read' });
    expectRefused(next, 'absent');
  });

  it.skipIf(skip)('cannot find Redis through /proc/net/tcp', async ({ redis }) => {
    const port = Number(new URL(redis.url).port);
    const r = await attack(layer, { attack: 'proc-net-tcp', port });
    expectRefused(r, READ_DENIED);
  });

  it.skipIf(skip)(
    `cannot open a raw connection to Redis with egress "none"${on || PERMISSION_MODEL_COVERS_NETWORK ? '' : ' — EXCEPT without the OS layer on Node < 25, whose permission model does not cover the network'}`,
    async ({ redis }) => {
      const port = Number(new URL(redis.url).port);
      const r = await attack(layer, { attack: 'connect', host: '127.0.0.1', port });
      // The permission model refuses the socket where it covers the network; otherwise, with the
      // OS layer, the sandbox's own network namespace has nothing listening on its loopback.
      if (PERMISSION_MODEL_COVERS_NETWORK) expectRefused(r, 'ERR_ACCESS_DENIED');
      else if (on) expectRefused(r, 'ECONNREFUSED');
      else expect(r.achieved, r.detail).toBe(true);
    },
  );

  it.skipIf(skip)(
    `with egress "any": reaches no loopback service directly${on ? '' : ' — EXCEPT without the OS layer, where the proxy is advisory and a raw socket gets through'}`,
    async ({ redis }) => {
      const port = Number(new URL(redis.url).port);
      const r = await attack(layer, { attack: 'connect', host: '127.0.0.1', port }, { egress: 'any' });
      // The sandbox's own network namespace: its loopback is not the host's.
      if (on) expectRefused(r, 'ECONNREFUSED');
      else expect(r.achieved, r.detail).toBe(true);
    },
  );

  it.skipIf(skip)(
    'through its proxy, cannot reach a cloud-metadata stand-in on loopback nor 169.254.169.254; each refusal is reported',
    async () => {
      const refusals: EgressRefusal[] = [];
      for (const via of ['fetch', 'http-get']) {
        for (const url of [
          `http://127.0.0.1:${metadataPort}/latest/meta-data/iam`,
          'http://169.254.169.254/latest/meta-data/',
        ]) {
          const r = await attack(layer, { attack: via, url }, { egress: 'any', onRefused: (x) => refusals.push(x) });
          // http:// URLs reach the proxy in absolute form (the 403 body reaches the processor) or,
          // with Node 22/24's fetch, through CONNECT.
          expectRefused(r, via === 'fetch' ? FETCH_REFUSED : 'HTTP 403');
          if (r.reason === 'HTTP 403') expect(r.detail, via).toMatch(/^403 fleet egress proxy refused/);
        }
      }
      expect(refusals.map((x) => x.destination)).toEqual([
        `127.0.0.1:${metadataPort}`,
        '169.254.169.254:80',
        `127.0.0.1:${metadataPort}`,
        '169.254.169.254:80',
      ]);
    },
  );

  it.skipIf(skip)(
    `cannot fill more than its temp dir's size cap${on ? '' : ' — EXCEPT without the OS layer: no cap applies'}`,
    async () => {
      const r = await attack(layer, { attack: 'fill-tmp', mb: 2 }, { tmpSizeMb: 2 });
      if (on) expectRefused(r, 'ENOSPC');
      else expect(r.achieved, r.detail).toBe(true);
    },
  );
});

describe.skipIf(!osLayer.available)('a hostile job type under a real supervisor (OS layer on)', () => {
  it("cannot find another type's secret value in any memory or environment it can reach while that job runs", async ({
    redis,
  }) => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-hostile-'));
    const value = `other-types-secret-${Date.now()}-value`;
    await localStore(dataDir, 2).write('payments-key', Buffer.from(value));
    const config = testConfig(
      redis.url,
      [
        fixtureType('holder', 'secret-reader.mjs', { secrets: ['payments-key'], timeoutMs: 20_000 }),
        fixtureType('hostile', 'hostile/attack.mjs', { sandbox: 'process', timeoutMs: 10_000 }),
      ],
      { dataDir },
    );
    const events = new FleetEventBus();
    await startSupervisor({ config, events });
    const producer = makeProducer(config);
    const handedOver = awaitNext(events, 'secret:accessed', (e) => e.jobType === 'holder');
    // Held long enough for three process sandboxes to start and attack on a busy machine.
    const holder = await producer.enqueue('holder', { names: ['payments-key'], holdMs: 8000 });
    // The holder has its value (the attacks run while that job holds it).
    expect(await handedOver).toMatchObject({ secret: 'payments-key', outcome: 'granted' });
    const results = [];
    for (const [data, reason] of [
      [{ attack: 'parent-memory', sentinel: value }, READ_DENIED],
      [{ attack: 'proc-environ', sentinel: value }, READ_DENIED],
      [{ attack: 'read-data-dir', dataDir }, 'ENOENT'],
    ] as const) {
      const job = await waitForJob(producer, (await producer.enqueue('hostile', data)).id);
      expect(job.state).toBe('completed');
      results.push([job.result as Outcome, reason] as const);
    }
    expect((await producer.getJob(holder.id)).state, 'the holder still held its value').toBe('active');
    for (const [r, reason] of results) expectRefused(r, reason);
    expect((await waitForJob(producer, holder.id, 20_000)).state).toBe('completed');
  });

  it('an egress refusal is audited with type, job and destination, counted, and fails the request; a listed destination works', async ({
    redis,
  }) => {
    const allowed = http.createServer((_q, s) => s.end('allowed-upstream'));
    await new Promise<void>((r) => allowed.listen(0, '127.0.0.1', () => r()));
    const allowedPort = (allowed.address() as net.AddressInfo).port;
    const events = new FleetEventBus();
    const metrics = new FleetMetrics({ defaultMetrics: false });
    metrics.attach(events);
    // Loopback is refused unless listed by address: this type lists one port of it.
    const config = testConfig(redis.url, [
      fixtureType('agent', 'hostile/attack.mjs', { sandbox: 'process', egress: [`127.0.0.1:${allowedPort}`] }),
    ]);
    await startSupervisor({ config, events });
    const producer = makeProducer(config);
    const ok = await waitForJob(
      producer,
      (await producer.enqueue('agent', { attack: 'fetch', url: `http://127.0.0.1:${allowedPort}/` })).id,
    );
    expect(ok.result).toMatchObject({ achieved: true, detail: '200 allowed-upstream' });
    const okHttp = await waitForJob(
      producer,
      (await producer.enqueue('agent', { attack: 'http-get', url: `http://127.0.0.1:${allowedPort}/` })).id,
    );
    expect(okHttp.result).toMatchObject({ achieved: true, detail: '200 allowed-upstream' });
    const refusedJob = await producer.enqueue('agent', {
      attack: 'fetch',
      url: `http://127.0.0.1:${metadataPort}/latest/meta-data/`,
    });
    const refused = await waitForJob(producer, refusedJob.id);
    expectRefused(refused.result as Outcome, FETCH_REFUSED);
    allowed.close();
    let audit: Awaited<ReturnType<typeof readAudit>> = [];
    await until(
      'the egress refusal in the audit trail',
      async () =>
        (audit = (await readAudit(redis.client, config.redis.prefix, {})).filter((a) => a.action === 'egress-refused'))
          .length > 0,
    );
    expect(audit).toEqual([
      expect.objectContaining({
        outcome: 'denied',
        jobType: 'agent',
        jobId: refusedJob.id,
        reason: expect.stringContaining(`127.0.0.1:${metadataPort}`),
      }),
    ]);
    expect(await metrics.registry.getSingleMetricAsString('fleet_egress_refused_total')).toContain(
      'fleet_egress_refused_total{job_type="agent"} 1',
    );
  });
});
