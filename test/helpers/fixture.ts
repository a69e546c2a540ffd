/**
 * The test API of the integration test files, as one vitest fixture (`test.extend`) instead of
 * `useTestRedis(); guardAgainstLeaks();` at the top of each file:
 *
 * - `redis`: a real redis-server for the file (free loopback port, no persistence), started when a
 *   test or a `beforeAll` first asks for it and released after the file; `redis.client` is made on
 *   first use. Each test still takes its own key prefix (testConfig does).
 * - a leak guard, on without being asked for: after each test, what startSupervisor and
 *   makeProducer started is stopped, and the test fails if a sandbox is still running
 *   (graphile-worker's test helpers fail a test that leaves a worker pool running).
 *
 * `fleetFileTest` is the same for files that keep one fleet running across their tests (started
 * in `fleetFileTest.beforeAll(async ({ redis }) => …)`): its guard runs once, after the file's
 * own `afterAll` hooks and before its Redis stops.
 */
import { test as base } from 'vitest';
import { releaseAndCheckLeaks } from './fleet.js';
import { openTestRedis, type TestRedis } from './redis.js';

export { afterAll, afterEach, beforeAll, beforeEach, describe, expect, vi } from 'vitest';
export type { TestRedis } from './redis.js';

const withRedis = base.extend(
  'redis',
  { scope: 'file' },
  // vitest reads a fixture's dependencies from its first parameter's pattern: `{}`, none.
  async ({}, { onCleanup }): Promise<TestRedis> => {
    const redis = await openTestRedis();
    onCleanup(() => redis.release());
    return redis;
  },
);

/** `it`/`test` with the file's `redis` and the per-test leak guard. */
export const test = withRedis.extend(
  'leakGuard',
  { auto: true },
  // vitest reads a fixture's dependencies from its first parameter's pattern: `{}`, none.
  ({}, { onCleanup }): void => onCleanup(releaseAndCheckLeaks),
);
export const it = test;

/**
 * `it`/`test` for a file that keeps one fleet running across its tests: the leak guard runs once,
 * after the file. It depends on `redis`, so it is set up after it and torn down before it.
 */
export const fleetFileTest = withRedis.extend(
  'leakGuard',
  { scope: 'file', auto: true },
  ({ redis: _redis }, { onCleanup }): void => onCleanup(releaseAndCheckLeaks),
);
