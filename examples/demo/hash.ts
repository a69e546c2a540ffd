import { createHash } from 'node:crypto';
import type { Processor } from 'fleet';

/** Demo: CPU work that reports progress and honours cancellation. */
const hash: Processor<{ text: string; rounds: number }> = async (job, ctx) => {
  let digest = job.data.text;
  for (let i = 1; i <= job.data.rounds; i++) {
    if (ctx.signal.aborted) throw new Error('stopped on request');
    digest = createHash('sha256').update(digest).digest('hex');
    if (i % 10_000 === 0) {
      ctx.progress({ done: i, of: job.data.rounds });
      await new Promise((r) => setImmediate(r));
    }
  }
  return { sha256: digest, rounds: job.data.rounds };
};
export default hash;
