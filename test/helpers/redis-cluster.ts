import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort } from '../../src/redis/embedded-redis.js';
import { until } from './fleet.js';
import type { PemPair } from './tls.js';

/** Whether `redis-cli` (which creates the cluster) is here. */
export const HAS_REDIS_CLI = spawnSync('redis-cli', ['--version']).status === 0;

export interface TestCluster {
  /** Client ports of the masters. */
  ports: number[];
  /** `redis-cluster://…` or, with TLS, `rediss-cluster://…` over every node. */
  url: string;
  release(): Promise<void>;
}

/**
 * A real 3-master Redis Cluster on loopback ports, no persistence. With `tls`, every node speaks
 * TLS only, on its client port and its cluster bus, and demands a client certificate (`client`).
 */
export async function startRedisCluster(
  options: { tls?: PemPair & { caFile: string; client: PemPair } } = {},
): Promise<TestCluster> {
  const { tls } = options;
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-cluster-'));
  const procs: ChildProcess[] = [];
  const ports: number[] = [];
  const cliTls = tls
    ? ['--tls', '--cacert', tls.caFile, '--cert', tls.client.certFile, '--key', tls.client.keyFile]
    : [];
  const cli = (port: number, ...args: string[]): string =>
    spawnSync('redis-cli', [...cliTls, '-p', String(port), ...args], { encoding: 'utf8' }).stdout ?? '';
  const release = async (): Promise<void> => {
    for (const p of procs) p.kill('SIGKILL');
    await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r(null) : p.once('exit', r)))));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < 3; i++) {
      // The bus port is chosen too: the default (port + 10000) may be taken, or past 65535.
      const [port, busPort] = [await freePort(), await freePort()];
      const listen = tls
        ? [
            ...['--port', '0', '--tls-port', String(port), '--tls-cluster', 'yes', '--tls-auth-clients', 'yes'],
            ...['--tls-cert-file', tls.certFile, '--tls-key-file', tls.keyFile, '--tls-ca-cert-file', tls.caFile],
          ]
        : ['--port', String(port)];
      const args = [
        ...listen,
        ...['--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-port', String(busPort)],
        ...['--cluster-config-file', `nodes-${port}.conf`, '--dir', dir],
        ...['--save', '', '--appendonly', 'no', '--maxmemory-policy', 'noeviction'],
      ];
      procs.push(spawn('redis-server', args, { stdio: 'ignore' }));
      ports.push(port);
    }
    for (const port of ports)
      await until(`cluster node ${port} answers`, async () => cli(port, 'ping').trim() === 'PONG');
    const nodes = ports.map((p) => `127.0.0.1:${p}`);
    const create = spawnSync(
      'redis-cli',
      [...cliTls, '--cluster', 'create', ...nodes, '--cluster-replicas', '0', '--cluster-yes'],
      { encoding: 'utf8' },
    );
    if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`);
    await until(
      'cluster_state:ok on every node',
      async () => ports.every((p) => cli(p, 'cluster', 'info').includes('cluster_state:ok')),
      20_000,
    );
    return { ports, url: `${tls ? 'rediss' : 'redis'}-cluster://${nodes.join(',')}`, release };
  } catch (err) {
    await release();
    throw err;
  }
}
