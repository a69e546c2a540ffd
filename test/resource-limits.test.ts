/**
 * Resource isolation from the kernel (part of `npm test` and `npm run test:hostile`): a sandbox
 * cannot take more memory, processes, inodes or descriptors than its type allows, and cannot make
 * the denied system calls even from native code. Under a real supervisor, with the OS layer on
 * (when this machine has it) and off; each test asserts the refusal's code, that the supervisor
 * still runs, and that another type's job still completes. The native half runs a small C program
 * (compiled here with `cc`) under the exact bubblewrap command line, cgroup, rlimits and seccomp
 * filter a sandbox gets, in place of Node, and the same program without them as the control.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FleetConfig } from '../src/config/resolve.js';
import { FleetEventBus } from '../src/events.js';
import { FleetMetrics } from '../src/observability/metrics.js';
import type { Producer } from '../src/producers/producer.js';
import { createSandboxCgroup, limitedCommand, probeResourceLimits } from '../src/workers/resource-limits.js';
import { probeOsLayer, processSandboxCommand } from '../src/workers/sandbox-boundary.js';
import { SANDBOX_ENTRY } from '../src/workers/sandbox-host.js';
import { seccompFile } from '../src/workers/process-host.js';
import { deniedSyscalls } from '../src/workers/seccomp-filter.js';
import type { Supervisor } from '../src/workers/supervisor.js';
import { FIXTURES, fixtureType, makeProducer, startSupervisor, testConfig, waitForJob } from './helpers/fleet.js';
import { beforeAll, describe, expect, fleetFileTest as it } from './helpers/fixture.js';

const osLayer = await probeOsLayer('auto');
const layer = probeResourceLimits('auto');
if (!layer.cgroups || !layer.rlimits)
  console.warn(`SKIPPING the kernel-limit half of the resource suite: ${layer.reasons.join('; ')}`);
if (!osLayer.available) console.warn(`SKIPPING the OS-layer runs of the resource suite: ${osLayer.reason}`);
const CC = spawnSync('cc', ['--version']).status === 0;
if (!CC) console.warn('SKIPPING the native-code attacks: no C compiler (`cc`). Fix: apt-get install gcc.');

const modes = [
  ['OS layer on', 'auto'],
  ['OS layer off', 'off'],
] as const;

describe.each(modes)('a sandbox past its kernel limits, %s', (mode, setting) => {
  const skip = !layer.cgroups || !layer.rlimits || (setting === 'auto' && !osLayer.available);
  let config: FleetConfig;
  let sup: Supervisor;
  let producer: Producer;
  const events = new FleetEventBus();
  const metrics = new FleetMetrics({ defaultMetrics: false });
  metrics.attach(events);

  it.beforeAll(async ({ redis }) => {
    if (skip) return;
    config = testConfig(
      redis.url,
      [
        fixtureType('greedy', 'hostile/appetite.mjs', {
          sandbox: 'process',
          isolation: 'job',
          attempts: 1,
          // Its outcome must be the limit it hits, however slowly a loaded host lets a sandbox at
          // nice 10 create its files (on the host's disk with the OS layer off) and fill its memory.
          timeoutMs: 80_000,
          maxOldGenerationSizeMb: 64,
          memoryLimitMb: 192,
          maxOpenFiles: 128,
          tmpSizeMb: 8,
        }),
        fixtureType('bystander', 'ok.mjs', { sandbox: 'process', isolation: 'pool' }),
      ],
      {
        supervisor: {
          metricsPort: 0,
          heartbeatMs: 500,
          shutdownDeadlineMs: 2000,
          osLayer: setting,
          // Without the OS layer no seccomp filter can be loaded: "required" refuses (tested below).
          resourceLimits: setting === 'auto' ? 'required' : 'auto',
        },
      },
    );
    sup = await startSupervisor({ config, events });
    producer = makeProducer(config);
  });

  const run = async (data: Record<string, unknown>) =>
    waitForJob(producer, (await producer.enqueue('greedy', data)).id, 90_000);
  const fleetStillServes = async (): Promise<void> => {
    expect(sup.state).toBe('running');
    const other = await waitForJob(producer, (await producer.enqueue('bystander', { ok: 1 })).id);
    expect(other.state).toBe('completed');
  };

  it.skipIf(skip)(
    'runs behind its cgroup and rlimits (and the seccomp filter with the OS layer)',
    async ({ redis }) => {
      const layers = sup.status().types.find((t) => t.jobType === 'greedy')?.layers ?? [];
      expect(layers).toEqual(expect.arrayContaining(['cgroup', 'rlimits']));
      if (setting === 'auto') expect(layers).toContain('seccomp');
      else {
        expect(layers).not.toContain('seccomp');
        // A limit that cannot be had stops a supervisor that requires them all, naming it.
        const strict = testConfig(redis.url, [fixtureType('greedy', 'hostile/appetite.mjs', { sandbox: 'process' })], {
          supervisor: { metricsPort: 0, osLayer: 'off', resourceLimits: 'required' },
        });
        await expect(startSupervisor({ config: strict })).rejects.toThrow(
          /supervisor.resourceLimits is "required" but not every limit can be had here: seccomp: the filter is loaded by bubblewrap, and the OS layer is unavailable/,
        );
      }
    },
  );

  it.skipIf(skip)(
    'allocating 1 GB of Buffers (off the 64 MB heap) past memoryLimitMb=192: MEMORY_LIMIT, counted; the supervisor carries on',
    async () => {
      const before = process.memoryUsage().rss;
      const job = await run({ what: 'buffers', mb: 1024 });
      expect(job.error?.code).toBe('MEMORY_LIMIT');
      expect(job.error?.message).toMatch(/memoryLimitMb=192/);
      expect(process.memoryUsage().rss - before).toBeLessThan(100 * 1024 * 1024);
      expect(await metrics.registry.getSingleMetricAsString('fleet_jobs_total')).toContain(
        'fleet_jobs_total{job_type="greedy",outcome="oom"} 1',
      );
      await fleetStillServes();
    },
  );

  it.skipIf(skip)('opening descriptors stops at maxOpenFiles (EMFILE)', async () => {
    const job = await run({ what: 'fds' });
    expect(job.state).toBe('completed');
    const r = job.result as { open: number; err: string };
    expect(r.err).toBe('EMFILE');
    expect(r.open).toBeLessThanOrEqual(128);
    await fleetStillServes();
  });

  it.skipIf(skip || setting !== 'auto')(
    '300,000 empty files in its /tmp: the inodes are kernel memory charged to its cgroup (MEMORY_LIMIT), not the host',
    async () => {
      const job = await run({ what: 'inodes', n: 300_000 });
      expect(job.error?.code, JSON.stringify(job.result)).toBe('MEMORY_LIMIT');
      await fleetStillServes();
    },
    120_000,
  );

  it.skipIf(skip)(
    'one sandbox hitting every limit at once (descriptors, files, memory) ends alone; jobs of another type complete meanwhile',
    async () => {
      const greedy = producer.enqueue('greedy', { what: 'everything' });
      const others = await Promise.all(Array.from({ length: 5 }, () => producer.enqueue('bystander', { ok: 1 })));
      const job = await waitForJob(producer, (await greedy).id, 90_000);
      expect(job.error?.code).toBe('MEMORY_LIMIT');
      for (const o of others) expect((await waitForJob(producer, o.id)).state).toBe('completed');
      expect(sup.state).toBe('running');
    },
    120_000,
  );

  it.skipIf(skip)("reports the cgroup's CPU time and peak memory to the job metrics", async () => {
    const job = await run({ what: 'buffers', mb: 32 });
    expect(job.state).toBe('completed');
    const peak = await metrics.registry.getSingleMetricAsString('fleet_job_peak_memory_bytes');
    expect(peak).toMatch(/fleet_job_peak_memory_bytes_count\{job_type="greedy"\} [1-9]/);
    expect(mode).toBeTruthy();
  });
});

describe.skipIf(!CC || !layer.cgroups || !layer.rlimits || !osLayer.available || !layer.seccomp)(
  'native code in place of Node, under the exact command line, cgroup, rlimits and filter of a sandbox',
  () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-native-'));
    const binary = path.join(dir, 'limits');

    beforeAll(() => {
      execFileSync('cc', ['-O1', '-o', binary, path.join(FIXTURES, 'native', 'limits.c')]);
    });

    interface Outcome {
      calls: Record<string, { ret: number; errno: number }>;
      calls2: Record<string, { ret: number; errno: number }>;
      rlimitCore: number;
      rlimitNofile: number;
      forked: number;
      forkErrno: number;
      raiseCore: number;
      abortSignal: number;
      coreDumped: number;
    }

    /** Runs the program as a sandbox's Node would be run (`limited`) or plainly (the control). */
    async function runNative(limited: boolean): Promise<Outcome> {
      const tmp = mkdtempSync(path.join(tmpdir(), 'fleet-native-tmp-'));
      let command = binary;
      let args: string[] = [];
      let cgroup = null;
      let fd: number | null = null;
      if (limited) {
        fd = openSync(seccompFile(), 'r');
        const cmd = processSandboxCommand({
          entry: SANDBOX_ENTRY,
          processorPath: path.join(FIXTURES, 'ok.mjs'),
          readPaths: [dir],
          tmpDir: tmp,
          tmpSizeMb: 8,
          maxOldGenerationSizeMb: 64,
          egress: 'none',
          egressSocket: null,
          proxyUrl: null,
          osLayer,
          forbiddenPaths: [],
          seccompFd: 4,
        });
        // Everything bubblewrap gets, up to `--`; then the program in place of `node …`.
        const bwrapArgs = [...cmd.args.slice(0, cmd.args.indexOf('--') + 1), binary];
        cgroup = createSandboxCgroup(`native-${process.pid}-${Date.now()}`, {
          memoryLimitMb: 256,
          maxProcesses: 32,
          cpuWeight: 100,
          maxOpenFiles: 128,
          maxFileSizeMb: 8,
        });
        ({ command, args } = limitedCommand(
          cmd.command,
          bwrapArgs,
          { memoryLimitMb: 256, maxProcesses: 32, cpuWeight: 100, maxOpenFiles: 128, maxFileSizeMb: 8 },
          { cgroup, rlimits: true, dropToUid: null },
        ));
      }
      const child = spawn(command, args, {
        stdio: ['ignore', 'pipe', 'inherit', 'ignore', ...(fd !== null ? [fd] : [])],
        env: { TMPDIR: limited ? '/tmp' : tmp },
        cwd: tmp,
      });
      if (fd !== null) closeSync(fd);
      let out = '';
      child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
      await cgroup?.remove();
      expect(code, out).toBe(0);
      if (limited)
        expect(
          readdirSync(tmp).filter((f) => f.startsWith('core')),
          'a core file was written',
        ).toEqual([]);
      return JSON.parse(out) as Outcome;
    }

    it('each denied system call fails with EPERM (clone3 ENOSYS), where the same program without the filter gets through or fails otherwise', async () => {
      const control = await runNative(false);
      const limited = await runNative(true);
      const all = { ...limited.calls, ...limited.calls2 };
      const controlAll = { ...control.calls, ...control.calls2 };
      for (const [name, r] of Object.entries(all)) {
        expect(r.ret, name).toBe(-1);
        expect(r.errno, name).toBe(name === 'clone3' ? 38 : 1);
      }
      // The filter, not the kernel's own rules, refused them: without it most go through or fail
      // with another errno (EFAULT, EINVAL, EAFNOSUPPORT, …).
      const differs = Object.keys(all).filter(
        (n) => controlAll[n]?.ret !== -1 || controlAll[n]?.errno !== all[n]?.errno,
      );
      expect(differs.length).toBeGreaterThanOrEqual(Object.keys(all).length - 4);
      for (const n of ['unshare', 'ptrace', 'personality', 'process_vm_readv', 'clone_newuser'])
        expect(controlAll[n]?.ret, `${n} without the filter`).not.toBe(-1);
      // Every call the filter's spec names was tried (those a C library exposes).
      expect(deniedSyscalls().length).toBeGreaterThan(40);
    });

    it('a fork bomb stops at pids.max; no core is dumped, and RLIMIT_CORE cannot be raised back', async () => {
      const control = await runNative(false);
      const limited = await runNative(true);
      expect(control.forked).toBe(4096);
      expect(limited.forked).toBeLessThan(32);
      expect(limited.forkErrno).toBe(11); // EAGAIN: the cgroup's pids.max
      expect(limited.rlimitCore).toBe(0);
      expect(limited.rlimitNofile).toBe(128);
      expect(limited.raiseCore).toBe(1); // EPERM: a hard limit of 0 is not raised without privilege
      expect(limited.abortSignal).toBe(6);
      expect(limited.coreDumped).toBe(0);
      expect(existsSync(binary)).toBe(true);
    });
  },
);

/** Kernel TCP memory in use on this host (`/proc/net/sockstat`, pages). */
function tcpMemBytes(): number {
  const m = /TCP: .* mem (\d+)/.exec(readFileSync('/proc/net/sockstat', 'utf8'));
  return Number(m?.[1] ?? 0) * 4096;
}

/** This process's memory-cgroup directory of sandbox cgroups (cgroup v1). */
function sandboxCgroupRoot(): string {
  const line = readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .find((l) => /^\d+:memory:/.test(l));
  return path.join('/sys/fs/cgroup/memory', line?.split(':')[2] ?? '/', `fleet-${process.pid}`);
}

describe.skipIf(layer.cgroups !== 'v1' || !osLayer.available || !layer.seccomp)(
  "what an attacker's review found in the kernel limits (OS layer on)",
  () => {
    let producer: Producer;
    let sup: Supervisor;
    it.beforeAll(async ({ redis }) => {
      const config = testConfig(
        redis.url,
        [
          fixtureType('spoof', 'hostile/spoof-oom.mjs', { sandbox: 'process', isolation: 'job', attempts: 1 }),
          fixtureType('linger', 'hostile/linger.mjs', {
            sandbox: 'process',
            isolation: 'job',
            attempts: 1,
            maxOldGenerationSizeMb: 64,
            memoryLimitMb: 192,
            timeoutMs: 1500,
            abortGraceMs: 100,
            concurrency: 4,
          }),
          fixtureType('tcphog', 'hostile/tcp-hog.mjs', {
            sandbox: 'process',
            isolation: 'pool',
            attempts: 1,
            egress: 'any',
            maxOldGenerationSizeMb: 64,
            memoryLimitMb: 128,
            timeoutMs: 40_000,
            concurrency: 1,
          }),
          fixtureType('bystander', 'ok.mjs', { sandbox: 'process', isolation: 'pool' }),
        ],
        { supervisor: { metricsPort: 0, heartbeatMs: 500, shutdownDeadlineMs: 2000, resourceLimits: 'required' } },
      );
      sup = await startSupervisor({ config });
      producer = makeProducer(config);
    });

    it('a heap-limit line a processor writes to its own stderr does not make its exit a MEMORY_LIMIT', async () => {
      const job = await waitForJob(producer, (await producer.enqueue('spoof', {})).id, 20_000);
      expect(job.error?.code).toBe('SANDBOX_CRASHED');
    });

    it('loopback TCP buffers in its own network namespace are charged to its cgroup (v1 kmem.tcp), not parked outside it', async () => {
      const before = tcpMemBytes();
      const job = await waitForJob(producer, (await producer.enqueue('tcphog', { connections: 120 })).id, 50_000);
      const parked = tcpMemBytes() - before;
      expect(job.state, JSON.stringify(job.error)).not.toBe('active');
      // Without the TCP limit the same processor parked ~480 MB here; with it, at most its cap.
      expect(parked).toBeLessThan(160 * 1024 * 1024);
      expect((await waitForJob(producer, (await producer.enqueue('bystander', { ok: 1 })).id)).state).toBe('completed');
      expect(sup.state).toBe('running');
    }, 60_000);

    it('no sandbox cgroup outlives its sandbox: killed at the timeout, each is emptied and removed', async () => {
      const ids = await Promise.all(
        Array.from({ length: 4 }, async () => (await producer.enqueue('linger', { mb: 120 })).id),
      );
      for (const id of ids) expect((await waitForJob(producer, id, 30_000)).error?.code).toBe('TIMEOUT');
      // Every cgroup left belongs to a live sandbox (a warm spare has one): none is empty.
      await expect
        .poll(
          () =>
            readdirSync(sandboxCgroupRoot(), { withFileTypes: true })
              .filter((d) => d.isDirectory())
              .filter((d) => readFileSync(path.join(sandboxCgroupRoot(), d.name, 'cgroup.procs'), 'utf8').trim() === '')
              .length,
          { timeout: 30_000, interval: 100 },
        )
        .toBe(0);
    }, 90_000);
  },
);
