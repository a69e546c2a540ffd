import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, expect, vi } from 'vitest';
import { resolveConfig, type FleetConfig } from '../../src/config/resolve.js';
import type { JobTypeInput } from '../../src/config/schema.js';
import { liveSandboxCount, type SandboxOptions } from '../../src/workers/sandbox.js';
import type { OsLayer } from '../../src/workers/sandbox-boundary.js';
import type { ProcessHostOptions } from '../../src/workers/process-host.js';
import { Supervisor, type SupervisorOptions } from '../../src/workers/supervisor.js';
import { Producer } from '../../src/producers/producer.js';
import { LocalProvider } from '../../src/secrets/local-provider.js';
import { uniquePrefix } from './redis.js';

export const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');

/**
 * Runs the `fleet` CLI (built) with `--config file` against the Redis at `redisUrl`, feeding
 * `stdin`. `out` is stdout and stderr as they came.
 */
export function runFleet(
  args: string[],
  file: string,
  redisUrl: string,
  stdin = '',
): Promise<{ code: number | null; stdout: string; stderr: string; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [path.join(FIXTURES, '..', '..', 'bin', 'fleet.js'), ...args, '--config', file],
      {
        env: { ...process.env, REDIS_URL: redisUrl },
      },
    );
    let stdout = '';
    let stderr = '';
    let out = '';
    child.stdout.on('data', (d: Buffer) => ((stdout += d.toString()), (out += d.toString())));
    child.stderr.on('data', (d: Buffer) => ((stderr += d.toString()), (out += d.toString())));
    child.on('exit', (code) => resolve({ code, stdout, stderr, out }));
    child.stdin.end(stdin);
  });
}

/** Writes a JSON config file into a fresh temp dir (also its dataDir unless given). */
export function writeJsonConfig(content: Record<string, unknown>, name = 'fleet'): { dir: string; file: string } {
  const dir = mkdtempSync(path.join(tmpdir(), `fleet-${name}-`));
  const file = path.join(dir, 'fleet.config.json');
  writeFileSync(file, JSON.stringify({ dataDir: dir, ...content }));
  return { dir, file };
}

/** A job type running a fixture processor, with test-friendly defaults. */
export function fixtureType(name: string, fixture: string, extra: Partial<JobTypeInput> = {}): JobTypeInput {
  return {
    name,
    processor: `./${fixture}`,
    timeoutMs: 5000,
    abortGraceMs: 200,
    attempts: 1,
    warmSandboxes: 1,
    concurrency: 2,
    ...extra,
  };
}

/** A resolved config over fixture processors, with its own Redis prefix. */
export function testConfig(url: string, jobTypes: JobTypeInput[], extra: Record<string, unknown> = {}): FleetConfig {
  return resolveConfig(
    // A data dir of its own: never inside the fixtures, which every fixture's sandbox may read.
    {
      redis: { url, prefix: uniquePrefix() },
      dataDir: mkdtempSync(path.join(tmpdir(), 'fleet-data-')),
      supervisor: { metricsPort: 0, heartbeatMs: 500, shutdownDeadlineMs: 2000 },
      jobTypes,
      ...extra,
    },
    { baseDir: FIXTURES },
  );
}

/** The OS layer turned off (a process sandbox on the permission model alone), naming why. */
export function osLayerOff(reason = 'turned off for the test'): OsLayer {
  return { available: false, reason, bwrapPath: 'bwrap' };
}

/**
 * Options of a process sandbox running `processorPath` (a path, or a name under test/fixtures),
 * with test-friendly defaults: egress "none", an 8 MB temp dir, nothing extra readable or
 * forbidden, no fleet addresses; `process` and `extra` override them.
 */
export function processSandbox(
  processorPath: string,
  osLayer: OsLayer,
  process: Partial<ProcessHostOptions> = {},
  extra: Partial<Omit<SandboxOptions, 'process'>> = {},
): SandboxOptions {
  return {
    processorPath: path.isAbsolute(processorPath) ? processorPath : path.join(FIXTURES, processorPath),
    jobType: 't',
    maxResultBytes: 1_000_000,
    maxOldGenerationSizeMb: 64,
    ...extra,
    process: {
      osLayer,
      egress: 'none',
      tmpSizeMb: 8,
      readPaths: [],
      forbiddenPaths: [],
      fleetAddresses: [],
      ...process,
    },
  };
}

/**
 * `secrets.vault` of a test config: AppRole login with the credentials in the given environment
 * variables (setupDevVault puts them there), against the Vault at `address`.
 */
export function vaultSecrets(
  address: string,
  extra: Record<string, unknown> = {},
  env: { roleId: string; secretId: string } = {
    roleId: 'FLEET_TEST_VAULT_ROLE_ID',
    secretId: 'FLEET_TEST_VAULT_SECRET_ID',
  },
): Record<string, unknown> {
  return { address, auth: 'approle', roleIdEnv: env.roleId, secretIdEnv: env.secretId, ...extra };
}

const started: { release(): Promise<void> }[] = [];

/** Starts a supervisor that is stopped after the test even if the test fails. */
export async function startSupervisor(options: SupervisorOptions): Promise<Supervisor> {
  const s = new Supervisor(options);
  started.push({ release: () => s.stop(0) });
  await s.start();
  return s;
}

export function makeProducer(config: FleetConfig): Producer {
  const p = new Producer({ config });
  started.push({ release: () => p.close() });
  return p;
}

export { until } from './until.js';

/** Polls until the job reaches a finished state; fails naming the job and its last state after `timeoutMs`. */
export async function waitForJob(
  p: Producer,
  id: string,
  timeoutMs = 15_000,
): Promise<Awaited<ReturnType<Producer['getJob']>>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const j = await p.getJob(id);
    if (j.state === 'completed' || j.state === 'failed') return j;
    if (Date.now() > deadline) throw new Error(`job ${id} still ${j.state} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Fails any test that leaves a supervisor or a sandbox running. `file`: checked once after the
 * file's own afterAll hooks (call it before them; vitest runs after-hooks as a stack), for files
 * that keep one fleet running across their tests.
 */
export function guardAgainstLeaks(scope: 'each' | 'file' = 'each'): void {
  (scope === 'each' ? afterEach : afterAll)(releaseAndCheckLeaks);
}

/**
 * Stops what startSupervisor and makeProducer started (newest first), then fails unless every
 * sandbox has exited. The leak guard of guardAgainstLeaks and of the test fixture (fixture.ts).
 */
export async function releaseAndCheckLeaks(): Promise<void> {
  const leftover = started.splice(0);
  for (const s of leftover.reverse()) await s.release();
  // Terminated threads report exit asynchronously: wait for the count to reach 0, up to a second.
  await vi.waitFor(() => expect(liveSandboxCount(), 'sandboxes left running after the test').toBe(0), {
    timeout: 1000,
    interval: 20,
  });
}

/** The local secret store of a data dir, as a supervisor with the default `secrets.local` settings opens it. */
export function localStore(dataDir: string, keepVersions = 5): LocalProvider {
  return new LocalProvider({
    file: path.join(dataDir, 'secrets.enc.json'),
    keyFile: path.join(dataDir, 'master.key'),
    masterKeyEnv: 'FLEET_TEST_NO_MASTER_KEY_ENV',
    keepVersions,
  });
}

/** `bin/fleet.js`, for tests that run the CLI as its own process. */
export const FLEET_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'fleet.js');

/** `fleet start --role worker` as a child process (stop it by its PID); `output()` is its stdout and stderr so far. */
export function spawnWorker(
  configFile: string,
  env: Record<string, string>,
): { child: ChildProcessWithoutNullStreams; output(): string } {
  const child = spawn(process.execPath, [FLEET_BIN, 'start', '--role', 'worker', '--config', configFile], {
    env: { ...process.env, LOG_LEVEL: 'info', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return { child, output: () => out };
}
