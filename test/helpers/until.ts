/**
 * Polls `fn` until it holds; fails after `timeoutMs` naming `what` (a function is called then, so
 * the message can say what was last seen). Free of vitest, so the reliability suite's own runner
 * (test/chaos/run.ts, compiled and run by node) waits the same way the tests do.
 */
export async function until(
  what: string | (() => string),
  fn: () => Promise<boolean>,
  timeoutMs = 10_000,
  intervalMs = 50,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > end)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
