import { performance } from 'node:perf_hooks';

/**
 * Benchmark processor: does nothing but note when it started (wall clock, sub-ms), so that
 * enqueue-to-start latency can be measured. Works under fleet's sandbox and BullMQ's.
 */
export default async function noop(): Promise<{ startedAt: number }> {
  return { startedAt: performance.timeOrigin + performance.now() };
}
