import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { loadConfig } from '../src/config/load.js';
import { FIXTURES, makeProducer, spawnWorker, startSupervisor, until, waitForJob } from './helpers/fleet.js';
import { uniquePrefix } from './helpers/redis.js';
import { waitForJobState } from './helpers/wait.js';
import { describe, expect, it } from './helpers/fixture.js';

const ROOT = path.join(FIXTURES, '..', '..');
const FLEET = path.join(ROOT, 'bin', 'fleet.js');
const run = promisify(execFile);

/** A JSON config file over the fixtures, with its own prefix. */
function writeConfig(extra: Record<string, unknown> = {}): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-life-'));
  const file = path.join(dir, 'fleet.config.json');
  writeFileSync(
    file,
    JSON.stringify({
      redis: { prefix: uniquePrefix() },
      dataDir: dir,
      supervisor: { metricsPort: 0, shutdownDeadlineMs: 300, heartbeatMs: 300 },
      jobTypes: [
        {
          name: 'slow',
          processor: path.join(FIXTURES, 'slow.mjs'),
          timeoutMs: 30_000,
          attempts: 1,
          concurrency: 2,
          warmSandboxes: 1,
        },
        {
          name: 'ok',
          processor: path.join(FIXTURES, 'ok.mjs'),
          payloadSchema: { type: 'object', properties: { n: { type: 'number' } }, required: ['n'] },
        },
      ],
      ...extra,
    }),
  );
  return file;
}

describe('supervisor process lifecycle', () => {
  it('ignores SIGUSR1 (no V8 inspector opens in a supervisor), where a plain node process opens one', async ({
    redis,
  }) => {
    const sendUsr1 = async (
      child: ReturnType<typeof spawn>,
      ready: () => boolean,
      out: () => string,
      opened: () => boolean = () => false,
    ): Promise<string> => {
      await until('the process to be up', () => Promise.resolve(ready()), 15_000);
      child.kill('SIGUSR1');
      // Waits for the inspector to open, for at most 700 ms: the supervisor's half asserts that
      // nothing opens, so this window (several times what the control needs) is the test there.
      const end = Date.now() + 700;
      while (!opened() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      return out();
    };
    // Control: without the flag, SIGUSR1 opens the inspector (so this check can fail).
    const plain = spawn(
      process.execPath,
      ['--inspect-port=0', '-e', 'console.log("up"); setInterval(() => {}, 1000)'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let plainOut = '';
    plain.stdout.on('data', (d: Buffer) => (plainOut += d.toString()));
    plain.stderr.on('data', (d: Buffer) => (plainOut += d.toString()));
    expect(
      await sendUsr1(
        plain,
        () => plainOut.includes('up'),
        () => plainOut,
        () => plainOut.includes('Debugger listening'),
      ),
    ).toContain('Debugger listening');
    plain.kill('SIGKILL');

    // bin/fleet.js run as an executable (its shebang passes --disable-sigusr1).
    const file = writeConfig();
    const child = spawn(FLEET, ['start', '--role', 'worker', '--config', file], {
      env: { ...process.env, REDIS_URL: redis.url, LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    try {
      const after = await sendUsr1(
        child,
        () => out.includes('"supervisor running"'),
        () => out,
      );
      expect(after).toContain('"supervisor running"');
      expect(after).not.toContain('Debugger listening');
      expect(child.exitCode).toBeNull();
      expect(child.signalCode).toBeNull();
    } finally {
      child.kill('SIGKILL');
    }
  });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`on ${signal} mid-job: drains, returns the unfinished job to wait, exits 0; nothing is lost`, async ({
      redis,
    }) => {
      const file = writeConfig();
      const config = await loadConfig({ path: file });
      const { child, output } = spawnWorker(file, { REDIS_URL: redis.url });
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      try {
        await until(
          'the worker to log "supervisor running"',
          () => Promise.resolve(output().includes('"supervisor running"')),
          15_000,
        );

        const p = makeProducer({ ...config, redis: { ...config.redis, url: redis.url } });
        const long = await p.enqueue('slow', { ms: 20_000 });
        const short = await p.enqueue('slow', { ms: 50 });
        await waitForJobState(p, long.id, 'active');
        await waitForJob(p, short.id);

        child.kill(signal);
        expect(await exited).toBe(0);
        const states = [...output().matchAll(/"state":"(\w+)"/g)].map((m) => m[1]);
        expect(states).toEqual(['starting', 'running', 'draining', 'stopped']);

        const back = await p.getJob(long.id);
        expect(back.state).toBe('waiting');
        expect(back.attemptsMade).toBe(0);
        expect((await p.getJob(short.id)).state).toBe('completed');

        // A fresh supervisor picks it up: the job was returned, not lost.
        const second = await startSupervisor({ config: { ...config, redis: { ...config.redis, url: redis.url } } });
        await p.cancel(long.id);
        const done = await waitForJob(p, long.id);
        expect(done.error?.code).toBe('CANCELLED');
        await second.stop(0);
      } finally {
        child.kill('SIGKILL');
      }
    });
  }
});

describe('CLI', () => {
  it('enqueue, job and status work against a running fleet, with --json for scripts', async ({ redis }) => {
    const file = writeConfig();
    const config = await loadConfig({ path: file });
    await startSupervisor({ config: { ...config, redis: { ...config.redis, url: redis.url } } });
    const env = { ...process.env, REDIS_URL: redis.url };
    const { stdout: enq } = await run(
      process.execPath,
      [FLEET, 'enqueue', 'ok', '{"n":1}', '--json', '--config', file],
      { env },
    );
    const { id } = JSON.parse(enq) as { id: string };
    expect(id).toMatch(/^ok\./);
    const p = makeProducer({ ...config, redis: { ...config.redis, url: redis.url } });
    await waitForJob(p, id);
    const { stdout: job } = await run(process.execPath, [FLEET, 'job', id, '--json', '--config', file], { env });
    expect(JSON.parse(job)).toMatchObject({ id, state: 'completed', result: { got: { n: 1 } } });
    const { stdout: status } = await run(process.execPath, [FLEET, 'status', '--workers', '--json', '--config', file], {
      env,
    });
    const s = JSON.parse(status) as {
      supervisors: { state: string; types: { jobType: string }[] }[];
      queues: Record<string, { completed: number }>;
    };
    expect(s.supervisors).toHaveLength(1);
    expect(s.supervisors[0]!.state).toBe('running');
    expect(s.queues.ok!.completed).toBe(1);
    const { stdout: human } = await run(process.execPath, [FLEET, 'status', '--workers', '--config', file], { env });
    expect(human).toMatch(/supervisors: 1[\s\S]*slow +job +active 0\/2/);
  });

  it('rejects a bad payload with its code and exit status 1, enqueuing nothing', async ({ redis }) => {
    const file = writeConfig();
    const env = { ...process.env, REDIS_URL: redis.url };
    const err = await run(process.execPath, [FLEET, 'enqueue', 'ok', '{"n":"x"}', '--json', '--config', file], {
      env,
    }).catch((e: { code: number; stderr: string }) => e);
    expect((err as { code: number }).code).toBe(1);
    expect(JSON.parse((err as { stderr: string }).stderr).error.code).toBe('INVALID_PAYLOAD');
    const bad = await run(process.execPath, [FLEET, 'enqueue', 'ok', '{oops', '--config', file], { env }).catch(
      (e: { stderr: string }) => e,
    );
    expect((bad as { stderr: string }).stderr).toContain('INVALID_JSON');
  });

  it('refuses an unsafe config at start-up, naming the setting', async ({ redis }) => {
    const file = writeConfig({
      jobTypes: [
        { name: 'pay', processor: path.join(FIXTURES, 'ok.mjs'), sensitivity: 'critical', timeoutMs: 300_000 },
      ],
    });
    const err = await run(process.execPath, [FLEET, 'start', '--config', file], {
      env: { ...process.env, REDIS_URL: redis.url },
    }).catch((e: { code: number; stderr: string }) => e);
    expect((err as { code: number }).code).toBe(1);
    expect((err as { stderr: string }).stderr).toContain('jobTypes.pay.timeoutMs is 300000');
  });
});

describe('Redis requirements at start-up', () => {
  it('refuses a Redis that evicts keys, naming the setting and the fix', async ({ redis }) => {
    const { Redis } = await import('ioredis');
    const r = new Redis(redis.url);
    await r.config('SET', 'maxmemory-policy', 'allkeys-lru');
    try {
      const file = writeConfig();
      const err = await run(process.execPath, [FLEET, 'start', '--role', 'worker', '--config', file], {
        env: { ...process.env, REDIS_URL: redis.url },
      }).catch((e: { code: number; stderr: string }) => e);
      expect((err as { code: number }).code).toBe(1);
      expect((err as { stderr: string }).stderr).toContain('maxmemory-policy is "allkeys-lru"');
      expect((err as { stderr: string }).stderr).toContain('noeviction');
    } finally {
      await r.config('SET', 'maxmemory-policy', 'noeviction');
      r.disconnect();
    }
  });
});
