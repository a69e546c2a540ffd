import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { startFleet, type FleetProcess } from '../src/app.js';
import { sha256Hex } from '../src/api/auth.js';
import { silentLogger } from '../src/observability/logger.js';
import { freePort } from '../src/redis/embedded-redis.js';
import { allDashboards } from '../grafana/dashboards.js';
import { FIXTURES, fixtureType, localStore, testConfig, until } from './helpers/fleet.js';
import { afterAll, describe, expect, fleetFileTest as it } from './helpers/fixture.js';

const ROOT = path.join(FIXTURES, '..', '..');
const PROMETHEUS = spawnSync('prometheus', ['--version']).status === 0 ? 'prometheus' : null;
if (!PROMETHEUS)
  console.warn(
    'SKIPPING Prometheus e2e: no `prometheus` on PATH. Fix: apt-get install -y prometheus (scripts/install-test-servers.sh does).',
  );

const TOKEN = 'e2e-admin-token-0123456789abcdef';
const SECRET_VALUE = 'e2e-secret-value-do-not-leak-42';

/** Every PromQL expression in the dashboards and alert rules (alerts without their threshold). */
function allExpressions(): { where: string; expr: string }[] {
  const out: { where: string; expr: string }[] = [];
  for (const [file, d] of Object.entries(allDashboards())) {
    for (const panel of d.panels ?? []) {
      for (const t of ('targets' in panel ? panel.targets : undefined) ?? []) {
        const expr = (t as { expr?: string }).expr;
        if (expr) out.push({ where: `${file} / ${'title' in panel ? panel.title : '?'}`, expr });
      }
    }
  }
  const rules = readFileSync(path.join(ROOT, 'prometheus', 'alerts.yml'), 'utf8');
  for (const m of rules.matchAll(/- alert: (\w+)\n\s+expr: (.+)\n/g)) {
    out.push({ where: `alert ${m[1]}`, expr: m[2]!.replace(/\s*(>|<|>=|<=|==|!=)\s*[\d.]+\s*$/, '') });
  }
  return out;
}

let fleet: FleetProcess;
let prom: ChildProcess;
let promUrl: string;
let promDir: string;
let loadRunning = true;
let load: Promise<void>;

it.beforeAll(async ({ redis }) => {
  if (!PROMETHEUS) return;
  const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-e2e-'));
  await localStore(dataDir, 2).write('api-key', Buffer.from(SECRET_VALUE));
  await localStore(dataDir, 2).write('bound-key', Buffer.from(`${SECRET_VALUE}-bound`));
  const config = testConfig(
    redis.url,
    [
      fixtureType('ok', 'ok.mjs', { isolation: 'pool' }),
      fixtureType('flaky', 'flaky.mjs', { attempts: 2, backoff: { type: 'fixed', delayMs: 10 } }),
      fixtureType('loop', 'infinite-loop.mjs', { timeoutMs: 200, abortGraceMs: 50 }),
      fixtureType('throws', 'throws.mjs', { isolation: 'pool' }),
      // Types with secrets run in process sandboxes; `pool` reuses them, so this steady load does
      // not spend the two cores on process start-up (which starves the scrapes).
      fixtureType('reader', 'secret-reader.mjs', { secrets: ['api-key'], isolation: 'pool' }),
      fixtureType('nosy', 'secret-undeclared.mjs', { secrets: ['api-key'], isolation: 'pool' }),
      fixtureType('missing', 'secret-reader.mjs', { secrets: ['no-such-key'], isolation: 'pool' }),
      // A processor that tries the cloud metadata address through its egress proxy.
      fixtureType('exfil', 'hostile/attack.mjs', { sandbox: 'process', egress: 'any', isolation: 'pool' }),
      // A processor that breaks its channel's protocol (a log line of no known level, sent raw).
      fixtureType('rogue', 'hostile/boundary.mjs', { sandbox: 'process', isolation: 'pool', attempts: 1 }),
      // A processor that sends its injected secret's placeholder to an allowed but unbound host.
      fixtureType('injector', 'inject-client.mjs', {
        secrets: ['bound-key'],
        egress: ['127.0.0.1:9', '127.0.0.1:10'],
        isolation: 'pool',
      }),
    ],
    {
      dataDir,
      api: { port: 0 },
      producers: [{ name: 'e2e', tokenSha256: sha256Hex(TOKEN), jobTypes: ['*'], admin: true }],
      secrets: {
        items: {
          // Rotated every second while jobs read it; and one whose rotation always fails its test step.
          'api-key': { rotation: { schedule: '1s', rotator: { type: 'random', bytes: 24 }, graceSeconds: 2 } },
          'bound-key': { binding: { hosts: ['127.0.0.1:9'] } },
          'partner-key': {
            rotation: {
              schedule: '1s',
              rotator: { type: 'module', path: path.join(FIXTURES, 'rotator-failing-test.mjs') },
              attempts: 1,
            },
          },
        },
      },
    },
  );
  fleet = await startFleet({ config, role: 'all', logger: silentLogger });

  promDir = mkdtempSync(path.join(tmpdir(), 'fleet-prom-'));
  const port = await freePort();
  promUrl = `http://127.0.0.1:${port}`;
  const host = (u: string): string => new URL(u).host;
  writeFileSync(
    path.join(promDir, 'prometheus.yml'),
    `global: { scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 1s }
rule_files: ['${path.join(ROOT, 'prometheus', 'alerts.yml')}']
scrape_configs:
  - job_name: fleet-api
    static_configs: [{ targets: ['${host(fleet.apiUrl!)}'] }]
  - job_name: fleet-worker
    static_configs: [{ targets: ['${host(fleet.metricsUrl!)}'] }]
`,
  );
  prom = spawn(
    PROMETHEUS,
    [
      `--config.file=${path.join(promDir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(promDir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    { stdio: 'ignore' },
  );
  await until(
    `Prometheus at ${promUrl} to be ready`,
    async () => (await fetch(`${promUrl}/-/ready`).catch(() => null))?.ok === true,
  );
  console.info(`Prometheus e2e uses ${PROMETHEUS} at ${promUrl}`);

  // A mixed load over HTTP, kept running while queries are evaluated so every rate has samples.
  const post = (type: string, data: unknown): Promise<Response> =>
    fetch(`${fleet.apiUrl}/v1/jobs/${type}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify(data),
    });
  load = (async () => {
    while (loadRunning) {
      await Promise.all([
        post('ok', { n: 1 }),
        post('ok', { n: 2 }),
        post('flaky', {}),
        post('loop', {}),
        post('throws', {}),
        post('reader', { names: ['api-key'] }),
        post('nosy', { name: 'someone-elses-key' }),
        post('missing', { names: ['no-such-key'] }),
        post('exfil', { attack: 'fetch', url: 'http://169.254.169.254/latest/meta-data/' }),
        post('injector', { url: 'https://127.0.0.1:10/', where: 'header', secret: 'bound-key' }),
        post('rogue', { attack: 'frame', message: { type: 'log', level: 'nope', msg: 'x', source: 'processor' } }),
        fetch(`${fleet.apiUrl}/v1/jobs/nope`, {
          method: 'POST',
          headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
          body: '{}',
        }),
      ]);
      // Pacing, not a wait: a steady load of a dozen requests every 300 ms.
      await new Promise((r) => setTimeout(r, 300));
    }
  })();
  // Enough scrapes for 30 s windows to hold several samples: five of each target.
  await until(
    'five scrapes of each fleet target',
    async () => {
      const r = await promQuery('min(count_over_time(up{job=~"fleet-.*"}[1m]))');
      const counts = (r.data?.result ?? []) as { value: [number, string] }[];
      return Number(counts[0]?.value[1] ?? 0) >= 5;
    },
    30_000,
  );
}, 90_000);

afterAll(async () => {
  loadRunning = false;
  await load?.catch(() => undefined);
  prom?.kill('SIGTERM');
  await fleet?.release();
  if (promDir) rmSync(promDir, { recursive: true, force: true });
}, 60_000);

async function promQuery(expr: string): Promise<{ status: string; error?: string; data?: { result: unknown[] } }> {
  const query = expr.replaceAll('$__rate_interval', '30s').replaceAll('$__interval', '5s');
  const r = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(query)}`);
  return (await r.json()) as { status: string; error?: string; data?: { result: unknown[] } };
}

describe('dashboards and alert rules', () => {
  it('regenerating the dashboards from code changes nothing', () => {
    for (const [file, d] of Object.entries(allDashboards())) {
      const committed = readFileSync(path.join(ROOT, 'grafana', 'dashboards', file), 'utf8');
      expect(committed, `grafana/dashboards/${file} is stale: run npm run dashboards`).toBe(
        `${JSON.stringify(d, null, 2)}\n`,
      );
    }
  });

  it('dashboard JSON has the structure Grafana provisioning needs', () => {
    const panel = z.object({
      type: z.enum(['timeseries', 'stat', 'row']),
      title: z.string().min(1),
      gridPos: z.object({
        h: z.number().positive(),
        w: z.number().positive(),
        x: z.number().min(0),
        y: z.number().min(0),
      }),
      datasource: z.object({ type: z.literal('prometheus'), uid: z.literal('prometheus') }).optional(),
      targets: z
        .array(
          z.object({
            expr: z.string().min(1),
            refId: z.string().regex(/^[A-Z]$/),
            datasource: z.object({ uid: z.literal('prometheus') }),
          }),
        )
        .optional(),
    });
    const uids = new Set<string>();
    for (const [file, d] of Object.entries(allDashboards())) {
      expect(d.schemaVersion, file).toBeGreaterThanOrEqual(39);
      expect(d.uid, file).toMatch(/^[a-z0-9-]+$/);
      uids.add(d.uid!);
      for (const p of d.panels ?? []) {
        const parsed = panel.safeParse(p);
        expect(parsed.success, `${file}: ${JSON.stringify(parsed.error?.issues)}`).toBe(true);
        if (p.type !== 'row') {
          const refIds = ((p as { targets?: { refId: string }[] }).targets ?? []).map((t) => t.refId);
          expect(new Set(refIds).size, `${file} ${'title' in p ? p.title : ''} refIds`).toBe(refIds.length);
          expect(refIds.length).toBeGreaterThan(0);
        }
      }
    }
    expect(uids.size).toBe(Object.keys(allDashboards()).length);
    const provisioning = readFileSync(
      path.join(ROOT, 'grafana', 'provisioning', 'datasources', 'prometheus.yml'),
      'utf8',
    );
    expect(provisioning).toContain('uid: prometheus');
  });
});

describe.skipIf(!PROMETHEUS)('against a real Prometheus scraping a real fleet', () => {
  it('scrapes every fleet endpoint and loads every alert rule', async () => {
    const targets = (await (await fetch(`${promUrl}/api/v1/targets`)).json()) as {
      data: { activeTargets: { health: string; lastError: string; labels: { job: string } }[] };
    };
    expect(
      targets.data.activeTargets.map((t) => [t.labels.job, t.health]).sort(),
      JSON.stringify(targets.data.activeTargets.map((t) => t.lastError)),
    ).toEqual([
      ['fleet-api', 'up'],
      ['fleet-worker', 'up'],
    ]);
    const rules = (await (await fetch(`${promUrl}/api/v1/rules`)).json()) as {
      data: { groups: { rules: { name: string; health: string }[] }[] };
    };
    const loaded = rules.data.groups.flatMap((g) => g.rules);
    expect(loaded.length).toBe(14);
    for (const r of loaded) expect(r.health, r.name).not.toBe('err');
  });

  it('every dashboard and alert expression is valid and returns series', async () => {
    const exprs = allExpressions();
    expect(exprs.length).toBeGreaterThan(30);
    const failures = async (): Promise<string[]> => {
      const out: string[] = [];
      for (const { where, expr } of exprs) {
        const r = await promQuery(expr);
        if (r.status !== 'success') out.push(`${where}: invalid: ${r.error}`);
        else if (!r.data?.result.length) out.push(`${where}: no series for ${expr}`);
      }
      return out;
    };
    // Series appear as the load's jobs reach each path and the next scrape picks their counters up.
    await expect.poll(failures, { timeout: 40_000, interval: 1000 }).toEqual([]);
  }, 60_000);

  it('no metric label carries a job id or a secret value', async () => {
    const body = await (await fetch(`${fleet.metricsUrl}/metrics`)).text();
    const api = await (await fetch(`${fleet.apiUrl}/metrics`)).text();
    for (const text of [body, api]) {
      expect(text).not.toMatch(/[a-z-]+\.k?[0-9a-f]{32,40}/);
      expect(text).not.toContain(SECRET_VALUE);
      expect(text).not.toContain(Buffer.from(SECRET_VALUE).toString('base64'));
    }
    const r = await promQuery('count by (__name__) ({job=~"fleet.*", job_type!=""})');
    expect(r.data!.result.length).toBeGreaterThan(5);
    const values = (await (await fetch(`${promUrl}/api/v1/label/route/values`)).json()) as { data: string[] };
    for (const route of values.data) expect(route).toMatch(/^(unmatched|\/[a-z0-9/:_-]*)$/);
  });
});
