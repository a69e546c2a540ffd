import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { freePort } from '../../src/redis/embedded-redis.js';

/**
 * Real Vault-API and KMS-API servers for the tests and the benchmark. Local binaries installed by
 * `scripts/install-test-servers.sh` come first (OpenBao, moto); with a Docker engine and no
 * binaries, testcontainers runs the official images. When neither is possible the caller skips
 * its tests and prints `reason`: never a fake server.
 */
export interface TestServer {
  url: string;
  /** What actually ran, printed by the suite. */
  via: string;
  release(): Promise<void>;
}

const CACHE_BIN = process.env.FLEET_SERVERS_BIN ?? path.join(homedir(), '.cache', 'fleet-test-servers', 'bin');

/** A server binary from the test-servers cache, else from PATH. */
export function findBinary(names: string[]): string | null {
  for (const name of names) {
    const cached = path.join(CACHE_BIN, name);
    if (existsSync(cached)) return cached;
    for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
      const p = path.join(dir, name);
      if (dir && existsSync(p)) return p;
    }
  }
  return null;
}

async function dockerAvailable(): Promise<boolean> {
  try {
    const { getContainerRuntimeClient } = await import('testcontainers');
    await getContainerRuntimeClient();
    return true;
  } catch {
    return false;
  }
}

async function waitHttp(url: string, child: ChildProcess, timeoutMs: number, log: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited with code ${child.exitCode}: ${log().slice(-2000)}`);
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (r.status < 500) return;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline)
      throw new Error(`server at ${url} did not come up in ${timeoutMs} ms: ${log().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

export interface VaultServer extends TestServer {
  rootToken: string;
  /** Stops the server process (for outage tests); `release` still cleans up. */
  kill(): Promise<void>;
}

/**
 * `fleet vault setup` against a dev server with the fleet's default names (mount `secret`, prefix
 * `fleet`, token role `fleet-job`, AppRole mount `approle`), and the audit MAC key created.
 */
export async function setupDevVault(
  vault: { url: string; rootToken: string },
  scopes: Iterable<[string, string[]]>,
  rotated: readonly string[] = [],
): Promise<Awaited<ReturnType<typeof import('../../src/secrets/vault-setup.js').setupVault>>> {
  const { setupVault } = await import('../../src/secrets/vault-setup.js');
  return setupVault({
    address: vault.url,
    adminToken: vault.rootToken,
    mount: 'secret',
    prefix: 'fleet',
    tokenRole: 'fleet-job',
    policyPrefix: 'fleet-job-',
    approleMount: 'approle',
    scopes: new Map(scopes),
    rotated,
    systemSecrets: ['audit-mac-key'],
  });
}

/** A Vault-API server in dev mode (in-memory, unsealed, KV v2 at `secret/`). */
export async function startVault(): Promise<VaultServer | { reason: string }> {
  const rootToken = `root-${randomBytes(8).toString('hex')}`;
  const bin = findBinary(['bao', 'vault']);
  if (bin) {
    const port = await freePort();
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-vault-'));
    const child = spawn(
      bin,
      ['server', '-dev', `-dev-root-token-id=${rootToken}`, `-dev-listen-address=127.0.0.1:${port}`],
      {
        env: { ...process.env, HOME: dir, BAO_ADDR: '', VAULT_ADDR: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    const url = `http://127.0.0.1:${port}`;
    await waitHttp(`${url}/v1/sys/health`, child, 30_000, () => out);
    const release = async (): Promise<void> => {
      await stop(child);
      rmSync(dir, { recursive: true, force: true });
    };
    return { url, rootToken, via: `${path.basename(bin)} server -dev (${bin})`, kill: () => stop(child), release };
  }
  if (await dockerAvailable()) {
    const { GenericContainer, Wait } = await import('testcontainers');
    const c = await new GenericContainer('hashicorp/vault:1.17')
      .withEnvironment({ VAULT_DEV_ROOT_TOKEN_ID: rootToken, VAULT_DEV_LISTEN_ADDRESS: '0.0.0.0:8200' })
      .withExposedPorts(8200)
      .withWaitStrategy(Wait.forHttp('/v1/sys/health', 8200))
      .start();
    const url = `http://${c.getHost()}:${c.getMappedPort(8200)}`;
    return {
      url,
      rootToken,
      via: 'testcontainers hashicorp/vault:1.17',
      kill: async () => void (await c.stop()),
      release: async () => void (await c.stop()),
    };
  }
  return {
    reason: `no Vault-API server: neither bao/vault in ${CACHE_BIN} or on PATH nor a Docker engine. Fix: bash scripts/install-test-servers.sh${existsSync(path.join(path.dirname(CACHE_BIN), 'bao.failed')) ? ` (last build failed: ${readFileSync(path.join(path.dirname(CACHE_BIN), 'bao.failed'), 'utf8').trim()})` : ''}`,
  };
}

/** moto_server on a free loopback port: one process serves every AWS API it mocks (KMS, Secrets Manager). */
async function startMoto(bin: string): Promise<TestServer> {
  const port = await freePort();
  const child = spawn(bin, ['-H', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const url = `http://127.0.0.1:${port}`;
  await waitHttp(`${url}/moto-api/`, child, 60_000, () => out);
  return { url, via: `moto_server (${bin})`, release: () => stop(child) };
}

/** A KMS-API server (moto). */
export async function startKms(): Promise<TestServer | { reason: string }> {
  const bin = findBinary(['moto_server']);
  if (bin) return startMoto(bin);
  if (await dockerAvailable()) {
    const { GenericContainer, Wait } = await import('testcontainers');
    const c = await new GenericContainer('nsmithuk/local-kms:3')
      .withExposedPorts(8080)
      .withWaitStrategy(Wait.forListeningPorts())
      .start();
    return {
      url: `http://${c.getHost()}:${c.getMappedPort(8080)}`,
      via: 'testcontainers nsmithuk/local-kms:3',
      release: async () => void (await c.stop()),
    };
  }
  return {
    reason: `no KMS-API server: no moto_server in ${CACHE_BIN} or on PATH and no Docker engine. Fix: bash scripts/install-test-servers.sh`,
  };
}

/** A Secrets-Manager-API server (moto; a stand-in for AWS, with no IAM and no real KMS behind it). */
export async function startSecretsManager(): Promise<TestServer | { reason: string }> {
  const bin = findBinary(['moto_server']);
  if (bin) return startMoto(bin);
  if (await dockerAvailable()) {
    const { GenericContainer, Wait } = await import('testcontainers');
    const c = await new GenericContainer('motoserver/moto:5.2.5')
      .withExposedPorts(5000)
      .withWaitStrategy(Wait.forHttp('/moto-api/', 5000))
      .start();
    return {
      url: `http://${c.getHost()}:${c.getMappedPort(5000)}`,
      via: 'testcontainers motoserver/moto:5.2.5',
      release: async () => void (await c.stop()),
    };
  }
  return {
    reason: `no Secrets-Manager-API server: no moto_server in ${CACHE_BIN} or on PATH and no Docker engine. Fix: bash scripts/install-test-servers.sh`,
  };
}

/** Fake AWS credentials for local AWS-API servers (they accept any). */
export function useLocalAwsCredentials(): void {
  process.env.AWS_ACCESS_KEY_ID ??= 'fleet-test';
  process.env.AWS_SECRET_ACCESS_KEY ??= 'fleet-test';
  process.env.AWS_REGION ??= 'us-east-1';
}
