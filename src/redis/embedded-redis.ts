import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import { FleetError } from '../errors.js';
import { aclFileText, serverFeatures, type RoleCredential, type RoleCredentials } from './acl.js';

export interface EmbeddedRedisOptions {
  /** Working directory of the server (AOF, dump). */
  dataDir: string;
  /** `true`: AOF everysec, for `npm start`. `false`: no persistence at all, for tests. @defaultValue true */
  persistent?: boolean;
  /** @defaultValue a free loopback port */
  port?: number;
  /** Extra `redis-server` arguments, e.g. `['--appendfsync', 'always']`. */
  args?: string[];
  /**
   * Runs the server with the fleet's per-role ACL users (written to `dataDir/users.acl`, mode
   * 0600; the `default` user off). Without it the server has only the passwordless default user.
   */
  acl?: { prefix: string; users: { roles: RoleCredentials; admin: RoleCredential } };
  /**
   * Serve TLS only (no plain port) with these PEM files; the URL is then `rediss://`. With
   * `authClients` the server demands a client certificate signed by `caFile`. @defaultValue plain TCP
   */
  tls?: { certFile: string; keyFile: string; caFile: string; authClients: boolean };
}

/** The version of the `redis-server` on PATH, e.g. `7.0.15`. */
export function redisServerVersion(): string {
  const out = spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout ?? '';
  return /v=([\d.]+)/.exec(out)?.[1] ?? '0';
}

export interface EmbeddedRedis {
  url: string;
  port: number;
  process: ChildProcess;
  /** Stops the server (SIGTERM, then SIGKILL after 5 s). */
  release(): Promise<void>;
}

export const REDIS_INSTALL_HINT =
  'redis-server was not found on PATH. Fix: install it (Debian/Ubuntu: `sudo apt-get install -y redis-server`; macOS: `brew install redis`) or set REDIS_URL to an existing Redis ≥ 6.2.';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

let setpriv: string | null | undefined;
/** `setpriv` when it can set a parent-death signal here (Linux, util-linux ≥ 2.33). */
function deathGuard(): string | null {
  if (setpriv === undefined) {
    const r = process.platform === 'linux' ? spawnSync('setpriv', ['--help'], { encoding: 'utf8' }) : null;
    setpriv = r?.status === 0 && r.stdout.includes('--pdeathsig') ? 'setpriv' : null;
  }
  return setpriv;
}

export function hasRedisServer(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** Starts a private `redis-server` bound to 127.0.0.1 and waits until it accepts connections. */
export async function startEmbeddedRedis(options: EmbeddedRedisOptions): Promise<EmbeddedRedis> {
  if (!hasRedisServer()) throw new FleetError('REDIS_NOT_INSTALLED', REDIS_INSTALL_HINT);
  mkdirSync(options.dataDir, { recursive: true });
  const port = options.port ?? (await freePort());
  const persistence =
    options.persistent === false
      ? ['--save', '', '--appendonly', 'no']
      : ['--appendonly', 'yes', '--appendfsync', 'everysec', '--save', ''];
  const aclArgs: string[] = [];
  if (options.acl) {
    const file = path.join(options.dataDir, 'users.acl');
    writeFileSync(file, aclFileText(options.acl.prefix, options.acl.users, serverFeatures(redisServerVersion())), {
      mode: 0o600,
    });
    aclArgs.push('--aclfile', file);
  }
  // The server dies with the process that started it, however that one ends (a crash, SIGKILL):
  // util-linux's setpriv sets the parent-death signal before it execs redis-server. Where it is
  // missing (macOS), only a clean stop ends the server.
  const guard = deathGuard();
  const child = spawn(
    guard ?? 'redis-server',
    [
      ...(guard ? ['--pdeathsig', 'TERM', '--', 'redis-server'] : []),
      ...(options.tls
        ? [
            '--port',
            '0',
            '--tls-port',
            String(port),
            '--tls-cert-file',
            options.tls.certFile,
            '--tls-key-file',
            options.tls.keyFile,
            '--tls-ca-cert-file',
            options.tls.caFile,
            '--tls-auth-clients',
            options.tls.authClients ? 'yes' : 'no',
          ]
        : ['--port', String(port)]),
      '--bind',
      '127.0.0.1',
      '--dir',
      options.dataDir,
      '--maxmemory-policy',
      'noeviction',
      '--protected-mode',
      'yes',
      ...aclArgs,
      ...persistence,
      ...(options.args ?? []),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const deadline = Date.now() + 10_000;
  while (!(await canConnect(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new FleetError(
        'REDIS_UNAVAILABLE',
        `embedded redis-server on port ${port} did not start: ${stderr.trim() || 'no output'}`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    url: `${options.tls ? 'rediss' : 'redis'}://127.0.0.1:${port}`,
    port,
    process: child,
    async release() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}
