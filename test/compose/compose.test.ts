/**
 * `npm run test:compose`: the whole stack of docker-compose.yml on a real Docker engine. Builds the
 * fleet image and brings everything up (`up -d --wait`), then: a job with a Vault secret and one
 * with a KMS secret complete in namespaced process sandboxes inside the worker container; the
 * secret values appear nowhere in Redis, the logs or the results; `fleet status` answers through
 * `docker compose exec`; Prometheus has every target up; `docker compose stop worker` drains without
 * losing a job; `--scale worker=3` spreads jobs; `docker compose down -v` leaves nothing. Prints one
 * JSON line at the end. Skips loudly, with the reason, when no engine is reachable.
 *
 * Where registry images cannot be pulled (these CI machines), the stand-ins of
 * scripts/build-standin-images.sh are built and used (deploy/compose.standin.yml); the JSON line
 * says which.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const run = promisify(execFile);
const TOKEN = 'quickstart-token-change-me-0123456789';

const engine = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8' });
const compose = spawnSync('docker', ['compose', 'version'], { encoding: 'utf8' });
const reason =
  engine.status !== 0
    ? `no Docker engine is reachable (${(engine.stderr || engine.error?.message || '').trim().split('\n')[0]}). Fix: start dockerd (the CI script does), or set DOCKER_HOST.`
    : compose.status !== 0
      ? 'the docker compose plugin is missing. Fix: scripts/install-test-servers.sh builds it (FLEET_COMPOSE=1).'
      : null;
if (reason) console.warn(`SKIPPING the compose stack test: ${reason}`);

/** Stand-ins unless the official images can be had (FLEET_COMPOSE_IMAGES=official|standin forces it). */
function imagesToUse(): 'official' | 'standin' {
  const wanted = process.env.FLEET_COMPOSE_IMAGES;
  if (wanted === 'official' || wanted === 'standin') return wanted;
  const pulled = spawnSync('docker', ['pull', '--quiet', 'redis:8.2.3-alpine'], { timeout: 30_000, encoding: 'utf8' });
  return pulled.status === 0 ? 'official' : 'standin';
}

/** A Lua script returning every key and every value in Redis (strings, hashes, lists, sets, zsets, streams). */
const EVERY_VALUE = [
  'local out = {}',
  "for _, k in ipairs(redis.call('keys', '*')) do",
  '  table.insert(out, k)',
  "  local t = redis.call('type', k).ok",
  "  if t == 'string' then table.insert(out, redis.call('get', k))",
  "  elseif t == 'hash' then for _, v in ipairs(redis.call('hgetall', k)) do table.insert(out, v) end",
  "  elseif t == 'list' then for _, v in ipairs(redis.call('lrange', k, 0, -1)) do table.insert(out, v) end",
  "  elseif t == 'set' then for _, v in ipairs(redis.call('smembers', k)) do table.insert(out, v) end",
  "  elseif t == 'zset' then for _, v in ipairs(redis.call('zrange', k, 0, -1)) do table.insert(out, v) end",
  "  elseif t == 'stream' then for _, e in ipairs(redis.call('xrange', k, '-', '+')) do for _, v in ipairs(e[2]) do table.insert(out, v) end end end",
  'end',
  'return out',
].join(' ');

const project = `fleet-e2e-${randomBytes(3).toString('hex')}`;
let files: string[] = [];
let images: 'official' | 'standin' = 'standin';
const summary: Record<string, unknown> = {};

async function dc(args: string[], timeoutMs = 600_000): Promise<string> {
  const { stdout } = await run('docker', ['compose', '-p', project, ...files.flatMap((f) => ['-f', f]), ...args], {
    cwd: ROOT,
    timeout: timeoutMs,
    maxBuffer: 64 * 1024 * 1024,
    env: { ...process.env, COMPOSE_STATUS_STDOUT: '1' },
  });
  return stdout;
}

async function apiUrl(): Promise<string> {
  const published = (await dc(['port', 'api', '8080'])).trim().split('\n')[0] ?? '';
  return `http://127.0.0.1:${published.split(':').at(-1)}`;
}

async function post(type: string, data: unknown): Promise<{ id: string }> {
  const r = await fetch(`${await apiUrl()}/v1/jobs/${type}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(data),
  });
  expect(r.status, await r.clone().text()).toBe(202);
  return (await r.json()) as { id: string };
}

interface JobView {
  id: string;
  state: string;
  result?: unknown;
  error?: { code: string; message: string };
}

async function waitJob(id: string, timeoutMs = 120_000): Promise<JobView> {
  const url = await apiUrl();
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await fetch(`${url}/v1/jobs/${id}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    const j = (await r.json()) as JobView;
    if (j.state === 'completed' || j.state === 'failed') return j;
    if (Date.now() > end) throw new Error(`job ${id} still ${j.state} after ${timeoutMs} ms`);
    await new Promise((res) => setTimeout(res, 250));
  }
}

/** Sets a secret's value through the one-shot init service (it holds the Vault root token and the Redis admin). */
async function setSecret(name: string, provider: 'vault' | 'kms', value: string): Promise<void> {
  await run(
    'docker',
    [
      'compose',
      '-p',
      project,
      ...files.flatMap((f) => ['-f', f]),
      'run',
      '--rm',
      '-T',
      '--no-deps',
      // The value from this process's environment, not the command line (ps shows argv).
      '-e',
      'SECRET_VALUE',
      '--entrypoint',
      'sh',
      'vault-init',
      '-c',
      `printf %s "$SECRET_VALUE" | node bin/fleet.js secrets set ${name} --provider ${provider}`,
    ],
    { cwd: ROOT, timeout: 120_000, env: { ...process.env, SECRET_VALUE: value } },
  );
}

describe.skipIf(reason !== null)('docker compose up: the whole stack on a real Docker engine', () => {
  const vaultValue = `vault-${randomBytes(16).toString('hex')}`;
  const kmsKey = randomBytes(32);
  const kmsValue = kmsKey.toString('base64');

  beforeAll(async () => {
    images = imagesToUse();
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-compose-'));
    // Host ports picked by the engine: the test never collides with what else runs here.
    const ports = path.join(dir, 'ports.yml');
    writeFileSync(
      ports,
      [
        'services:',
        '  api: { ports: !override ["127.0.0.1::8080"] }',
        '  prometheus: { ports: !override ["127.0.0.1::9090"] }',
        '  grafana: { ports: !override ["127.0.0.1::3000"] }',
        '',
      ].join('\n'),
    );
    files = ['docker-compose.yml', ...(images === 'standin' ? ['deploy/compose.standin.yml'] : []), ports];
    if (images === 'standin')
      execFileSync('bash', [path.join(ROOT, 'scripts', 'build-standin-images.sh')], {
        stdio: 'inherit',
        timeout: 1_200_000,
      });
    const started = Date.now();
    await dc(['up', '-d', '--build', '--wait', '--wait-timeout', '300'], 1_200_000);
    summary.upSeconds = Math.round((Date.now() - started) / 1000);
  }, 1_500_000);

  afterAll(async () => {
    if (!files.length) return;
    await dc(['down', '-v', '--remove-orphans'], 180_000).catch((err: unknown) => console.error(err));
    console.log(JSON.stringify({ images, ...summary }));
  }, 200_000);

  it('every service is up and healthy; vault-init completed', async () => {
    const ps = (await dc(['ps', '-a', '--format', 'json']))
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { Service: string; State: string; Health: string; ExitCode: number });
    const byService = new Map(ps.map((p) => [p.Service, p]));
    expect(byService.get('vault-init')).toMatchObject({ State: 'exited', ExitCode: 0 });
    const running = ps.filter((p) => p.Service !== 'vault-init');
    for (const p of running) expect(p.State, p.Service).toBe('running');
    for (const p of running.filter((x) => x.Health)) expect(p.Health, p.Service).toBe('healthy');
    summary.servicesHealthy = running.length;
    summary.services = [...new Set(running.map((p) => p.Service))].sort();
  });

  it('a job with a Vault secret and one with a KMS secret complete in namespaced sandboxes in the worker container; the values appear nowhere', async () => {
    await setSecret('webhook-signing-key', 'vault', vaultValue);
    await setSecret('payload-encryption-key', 'kms', kmsValue);
    const signed = await waitJob((await post('sign-webhook', { url: 'https://example.com/hook', body: 'paid' })).id);
    expect(signed.state, JSON.stringify(signed.error)).toBe('completed');
    expect(signed.result).toEqual({
      url: 'https://example.com/hook',
      signature: `sha256=${createHmac('sha256', vaultValue).update('paid').digest('hex')}`,
    });
    const sealed = await waitJob((await post('encrypt-payload', { plaintext: 'card 4242' })).id);
    expect(sealed.state, JSON.stringify(sealed.error)).toBe('completed');
    const s = sealed.result as { iv: string; tag: string; ciphertext: string };
    const d = createDecipheriv('aes-256-gcm', kmsKey, Buffer.from(s.iv, 'base64'));
    d.setAuthTag(Buffer.from(s.tag, 'base64'));
    expect(Buffer.concat([d.update(Buffer.from(s.ciphertext, 'base64')), d.final()]).toString()).toBe('card 4242');
    summary.jobsWithSecretsCompleted = 2;

    // The workers report the layers their sandboxes run behind (read through the API container,
    // which holds the read-only ops credential).
    const status = JSON.parse(
      await dc(['exec', '-T', 'api', 'node', 'bin/fleet.js', 'status', '--workers', '--json']),
    ) as {
      supervisors: { types: { jobType: string; layers: string[] }[] }[];
    };
    const layers = status.supervisors.flatMap((x) => x.types).find((t) => t.jobType === 'sign-webhook')?.layers ?? [];
    expect(layers).toContain('namespaces');
    // Inside the container: rlimits and the seccomp filter; per-sandbox cgroups only where the
    // engine delegates a writable cgroup tree (docs/security.md#resource-limits-from-the-kernel).
    expect(layers).toEqual(expect.arrayContaining(['rlimits', 'seccomp']));
    summary.osLayer = layers.includes('namespaces') ? 'namespaces' : 'none';
    summary.sandboxLayers = layers;

    // Nowhere: every key and value in Redis, every service's log, the results.
    const dump = await dc([
      'exec',
      '-T',
      'redis',
      'sh',
      '-c',
      `redis-cli --no-auth-warning -a "$REDIS_ADMIN_PASSWORD" --raw eval "${EVERY_VALUE}" 0`,
    ]);
    expect(dump.length).toBeGreaterThan(1000);
    expect(dump).toContain(signed.id);
    const logs = await dc(['logs', '--no-color']);
    expect(logs).toContain(signed.id);
    for (const value of [vaultValue, kmsValue, kmsKey.toString('hex')]) {
      expect(dump.includes(value), 'a secret value in Redis').toBe(false);
      expect(logs.includes(value), 'a secret value in a log').toBe(false);
      expect(JSON.stringify([signed, sealed]).includes(value), 'a secret value in a result').toBe(false);
    }
  });

  it('Prometheus scrapes every target, and every one is up', async () => {
    const port = (await dc(['port', 'prometheus', '9090'])).trim().split(':').at(-1);
    const targets = await expect
      .poll(
        async () => {
          const r = (await (await fetch(`http://127.0.0.1:${port}/api/v1/targets`)).json()) as {
            data: { activeTargets: { labels: { job: string }; health: string }[] };
          };
          const t = r.data.activeTargets;
          return t.length >= 4 && t.every((x) => x.health === 'up') ? t : null;
        },
        { timeout: 90_000, interval: 2000 },
      )
      .not.toBeNull();
    void targets;
    summary.prometheusTargetsUp = true;
  });

  it('`docker compose stop worker` drains: no job is lost; a restarted worker finishes what was returned', async () => {
    const ids = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        post('sign-webhook', { url: 'https://example.com/hook', body: `drain-${i}` }),
      ),
    );
    await dc(['stop', 'worker'], 120_000);
    await dc(['start', 'worker'], 120_000);
    const jobs = await Promise.all(ids.map((j) => waitJob(j.id, 180_000)));
    const lost = jobs.filter((j) => j.state !== 'completed');
    expect(lost, JSON.stringify(lost)).toEqual([]);
    summary.lost = lost.length;
  });

  it('`--scale worker=3` spreads jobs over the replicas', async () => {
    await dc(['up', '-d', '--no-recreate', '--scale', 'worker=3', '--wait', '--wait-timeout', '180'], 400_000);
    const ids = await Promise.all(Array.from({ length: 60 }, (_, i) => post('echo', { message: `spread-${i}` })));
    await Promise.all(ids.map((j) => waitJob(j.id)));
    const per: number[] = [];
    for (let index = 1; index <= 3; index++) {
      const metrics = await dc([
        'exec',
        '-T',
        '--index',
        String(index),
        'worker',
        'node',
        '-e',
        "fetch('http://127.0.0.1:9464/metrics').then((r) => r.text()).then((t) => console.log(t))",
      ]);
      const m = /fleet_jobs_total\{job_type="echo",outcome="completed"\} (\d+)/.exec(metrics);
      per.push(Number(m?.[1] ?? 0));
    }
    expect(per.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(60);
    expect(per.filter((n) => n > 0).length, `echo jobs per replica: ${per.join(', ')}`).toBeGreaterThanOrEqual(2);
    summary.jobsPerReplica = per;
  });

  it('`docker compose down -v` leaves no container, volume or network', async () => {
    await dc(['down', '-v', '--remove-orphans'], 180_000);
    const label = `label=com.docker.compose.project=${project}`;
    for (const kind of ['ps -a', 'volume ls', 'network ls']) {
      const { stdout } = await run('docker', [...kind.split(' '), '--filter', label, '--format', '{{.ID}}']);
      expect(stdout.trim(), kind).toBe('');
    }
    summary.leftBehind = 0;
  });
});
