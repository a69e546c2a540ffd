import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { loadConfig } from '../src/config/load.js';
import { FIXTURES, makeProducer, until, waitForJob, writeJsonConfig } from './helpers/fleet.js';
import { uniquePrefix } from './helpers/redis.js';
import { describe, expect, it } from './helpers/fixture.js';

describe('many supervisors (separate processes, as on separate hosts)', () => {
  it('share the work: every job runs exactly once and the fleet-wide cap holds', async ({ redis }) => {
    const { file } = writeJsonConfig(
      {
        redis: { prefix: uniquePrefix() },
        supervisor: { metricsPort: 0, heartbeatMs: 500 },
        jobTypes: [
          {
            name: 'slow',
            processor: path.join(FIXTURES, 'slow.mjs'),
            isolation: 'pool',
            concurrency: 3,
            warmSandboxes: 3,
            globalConcurrency: 4,
            attempts: 1,
          },
        ],
      },
      'many',
    );
    const procs: ChildProcess[] = [];
    const outputs: string[] = [];
    for (let i = 0; i < 3; i++) {
      const child = spawn(
        process.execPath,
        [path.join(FIXTURES, '..', '..', 'bin', 'fleet.js'), 'start', '--role', 'worker', '--config', file],
        { env: { ...process.env, REDIS_URL: redis.url }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      outputs.push('');
      child.stdout!.on('data', (d: Buffer) => (outputs[i] += d.toString()));
      procs.push(child);
    }
    try {
      await until(
        'three workers to log "supervisor running"',
        () => Promise.resolve(outputs.every((o) => o.includes('"supervisor running"'))),
        15_000,
      );
      const config = await loadConfig({ path: file });
      const p = makeProducer({ ...config, redis: { ...config.redis, url: redis.url } });
      const jobs = await p.enqueueBatch(
        'slow',
        Array.from({ length: 60 }, () => ({ data: { ms: 80 } })),
      );
      const results = [];
      for (const j of jobs) {
        const done = await waitForJob(p, j.id, 30_000);
        expect(done.state).toBe('completed');
        expect(done.attemptsMade).toBe(1);
        results.push(done.result as { startedAt: number; endedAt: number; pid: number });
      }
      const events = results
        .flatMap((s) => [[s.startedAt, 1] as const, [s.endedAt, -1] as const])
        .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      let now = 0;
      let max = 0;
      for (const [, d] of events) max = Math.max(max, (now += d));
      expect(max).toBeLessThanOrEqual(4);
      expect(new Set(results.map((r) => r.pid)).size).toBeGreaterThan(1);
      // Completed exactly once: each job id done once, and the queue holds exactly 60 completions.
      expect(new Set(jobs.map((j) => j.id)).size).toBe(60);
      expect((await p.queue('slow').getJobCounts('completed')).completed).toBe(60);
    } finally {
      for (const c of procs) c.kill('SIGTERM');
      await Promise.all(procs.map((c) => new Promise((r) => (c.exitCode !== null ? r(null) : c.once('exit', r)))));
    }
  });

  it('a second supervisor on a taken metrics port stops with the setting and fix named; --metrics-port and FLEET_METRICS_PORT override it', async ({
    redis,
  }) => {
    const busy = http.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
    const port = (busy.address() as AddressInfo).port;
    const { file } = writeJsonConfig(
      {
        redis: { prefix: uniquePrefix() },
        supervisor: { metricsPort: port },
        jobTypes: [{ name: 'ok', processor: path.join(FIXTURES, 'ok.mjs'), sandbox: 'thread' }],
      },
      'port',
    );
    const bin = path.join(FIXTURES, '..', '..', 'bin', 'fleet.js');
    const run = (args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string }> =>
      new Promise((resolve) => {
        const child = spawn(process.execPath, [bin, 'start', '--role', 'worker', '--config', file, ...args], {
          env: { ...process.env, REDIS_URL: redis.url, ...env },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (out += d.toString()));
        const timer = setInterval(() => {
          if (!out.includes('"supervisor running"')) return;
          clearInterval(timer);
          child.kill('SIGTERM');
        }, 50);
        child.once('exit', (code) => {
          clearInterval(timer);
          resolve({ code, out });
        });
      });
    try {
      const taken = await run([]);
      expect(taken.code).toBe(1);
      expect(taken.out).toContain(`metrics port 127.0.0.1:${port} is already in use`);
      expect(taken.out).toContain('--metrics-port');
      expect(taken.out).not.toContain('INTERNAL');
      const flag = await run(['--metrics-port', '0']);
      expect(flag.out).toContain('"supervisor running"');
      expect(flag.code).toBe(0);
      const env = await run([], { FLEET_METRICS_PORT: '0' });
      expect(env.out).toContain('"supervisor running"');
      const bad = await run(['--metrics-port', 'abc']);
      expect(bad.code).toBe(1);
      expect(bad.out).toContain('--metrics-port / FLEET_METRICS_PORT must be a port number');
    } finally {
      busy.close();
    }
  });
});
