import { appendFileSync } from 'node:fs';
import type { Processor } from 'fleet';

/** Chaos: sleeps `ms`, and records each execution (to count re-runs after a supervisor is killed). */
const work: Processor<{ ms?: number; log?: string; fail?: boolean }> = async (job, ctx) => {
  if (job.data.log) appendFileSync(job.data.log, `${job.id}\n`);
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, job.data.ms ?? 20);
    ctx.signal.addEventListener('abort', () => {
      clearTimeout(t);
      reject(new Error('aborted'));
    });
  });
  if (job.data.fail) throw new Error('planned failure');
  return { ok: true };
};
export default work;
