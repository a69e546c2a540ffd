/**
 * `npm run bench -- --only at-rest`: the cost of sealing job data at rest (`encryptData`), the same
 * type with and without it, in the same run on the same Redis: enqueue through the producer (the
 * payload sealed), and job throughput (payload opened, result sealed) with the supervisor's CPU per
 * job. Alternating pairs (AB, BA, AB), the median ratio kept.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { resolveConfig, type FleetConfig } from '../src/config/resolve.js';
import { Producer } from '../src/producers/producer.js';
import { Supervisor } from '../src/workers/supervisor.js';

export interface AtRestFigures {
  enqueuePerSecond: { plain: number[]; sealed: number[] };
  jobsPerSecond: { plain: number[]; sealed: number[] };
  cpuMsPerJob: { plain: number[]; sealed: number[] };
  /** Throughput ratios, and `cpuPlainVsSealed`: the plain type's CPU per job over the sealed one's (≥ 0.9: at most ~11% more CPU). */
  ratios: { enqueueSealedVsPlain: number; jobsSealedVsPlain: number; cpuPlainVsSealed: number };
}

/** A payload of a realistic size (a few hundred bytes of JSON). */
const PAYLOAD = { customerId: 'cust-0042', amountCents: 1999, currency: 'EUR', note: 'n'.repeat(200) };

let seq = 0;
function config(url: string, processor: string, concurrency: number, encryptData: boolean): FleetConfig {
  return resolveConfig(
    {
      redis: { url, prefix: `benchrest${++seq}` },
      dataDir: mkdtempSync(path.join(tmpdir(), 'fleet-bench-rest-')),
      supervisor: { metricsPort: 0 },
      jobTypes: [
        {
          name: 'noop',
          processor,
          isolation: 'pool',
          concurrency,
          warmSandboxes: concurrency,
          attempts: 1,
          timeoutMs: 30_000,
          keepCompletedSeconds: 3600,
          encryptData,
        },
      ],
    },
    { baseDir: path.dirname(processor) },
  );
}

/** Single enqueues through the producer, 16 in flight; the first one (opening the data key) is not timed. */
async function enqueueRate(cfg: FleetConfig, jobs: number): Promise<number> {
  const p = new Producer({ config: cfg });
  try {
    await p.enqueue('noop', PAYLOAD);
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next++ < jobs) await p.enqueue('noop', PAYLOAD);
      }),
    );
    return Math.round(jobs / ((performance.now() - t0) / 1000));
  } finally {
    await p.queue('noop').obliterate({ force: true });
    await p.close();
  }
}

/** Jobs enqueued in batches of 500 to a started supervisor; the clock runs to the last one finished. */
async function jobRate(cfg: FleetConfig, jobs: number): Promise<{ perSecond: number; cpuMsPerJob: number }> {
  const sup = new Supervisor({ config: cfg });
  const p = new Producer({ config: cfg });
  let done = 0;
  let resolveAll!: () => void;
  const all = new Promise<void>((r) => (resolveAll = r));
  sup.events.on('job:finished', () => {
    if (++done === jobs + 1) resolveAll();
  });
  await sup.start();
  try {
    // One job first, not timed: the data key is read and the queue made on both sides.
    await p.enqueue('noop', PAYLOAD);
    while (done < 1) await new Promise((r) => setTimeout(r, 5));
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < jobs; i += 500)
      await p.enqueueBatch(
        'noop',
        Array.from({ length: Math.min(500, jobs - i) }, () => ({ data: PAYLOAD })),
      );
    await all;
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    return { perSecond: Math.round(jobs / seconds), cpuMsPerJob: (cpu.user + cpu.system) / 1000 / jobs };
  } finally {
    await sup.stop(0);
    await p.queue('noop').obliterate({ force: true });
    await p.close();
  }
}

function medianRatio(plain: readonly number[], sealed: readonly number[]): number {
  const r = plain.map((a, i) => (sealed[i] ?? NaN) / a).sort((x, y) => x - y);
  return Math.round((r[Math.floor(r.length / 2)] ?? NaN) * 100) / 100;
}

export async function atRestRuns(
  url: string,
  options: { processor: string; jobs: number; concurrency: number; say: (s: string) => void },
): Promise<AtRestFigures> {
  const { processor, jobs, concurrency, say } = options;
  const out: AtRestFigures = {
    enqueuePerSecond: { plain: [], sealed: [] },
    jobsPerSecond: { plain: [], sealed: [] },
    cpuMsPerJob: { plain: [], sealed: [] },
    ratios: { enqueueSealedVsPlain: NaN, jobsSealedVsPlain: NaN, cpuPlainVsSealed: NaN },
  };
  for (let round = 0; round < 3; round++) {
    const order: ('plain' | 'sealed')[] = round % 2 === 0 ? ['plain', 'sealed'] : ['sealed', 'plain'];
    for (const kind of order) {
      const enq = await enqueueRate(config(url, processor, concurrency, kind === 'sealed'), jobs);
      const run = await jobRate(config(url, processor, concurrency, kind === 'sealed'), jobs);
      out.enqueuePerSecond[kind].push(enq);
      out.jobsPerSecond[kind].push(run.perSecond);
      out.cpuMsPerJob[kind].push(Math.round(run.cpuMsPerJob * 1000) / 1000);
      say(
        `  round ${round + 1} ${kind.padEnd(6)} enqueue ${String(enq).padStart(6)}/s   jobs ${String(run.perSecond).padStart(6)}/s   CPU ${run.cpuMsPerJob.toFixed(3)} ms/job`,
      );
    }
  }
  out.ratios = {
    enqueueSealedVsPlain: medianRatio(out.enqueuePerSecond.plain, out.enqueuePerSecond.sealed),
    jobsSealedVsPlain: medianRatio(out.jobsPerSecond.plain, out.jobsPerSecond.sealed),
    cpuPlainVsSealed: medianRatio(out.cpuMsPerJob.sealed, out.cpuMsPerJob.plain),
  };
  say(`data at rest, sealed vs plain (median of 3 pairs; target ≥ 0.9): ${JSON.stringify(out.ratios)}`);
  return out;
}
