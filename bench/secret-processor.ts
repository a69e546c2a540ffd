import { performance } from 'node:perf_hooks';
import type { Processor } from 'fleet';

/** Benchmark processor: reads its one secret (delivered at job start) and notes when it started. */
const withSecret: Processor<unknown, { startedAt: number; length: number }> = async (_job, ctx) => {
  const startedAt = performance.timeOrigin + performance.now();
  const v = await ctx.secrets.get('bench-key');
  return { startedAt, length: v.length };
};
export default withSecret;
