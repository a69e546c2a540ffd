import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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

/** Stops a server child by its PID: `signal`, then SIGKILL after 5 s. */
function stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill(signal);
  });
}

export interface VaultServer extends TestServer {
  rootToken: string;
  /** With `tls`: a second HTTPS listener that demands a client certificate signed by `tls.caFile`. */
  clientCertUrl?: string;
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
  dynamic: ReadonlyMap<string, string> = new Map(),
  tls?: import('node:tls').ConnectionOptions,
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
    dynamic,
    rotated,
    systemSecrets: ['audit-mac-key'],
    ...(tls ? { tls } : {}),
  });
}

/**
 * A Vault-API server in dev mode (in-memory, unsealed, KV v2 at `secret/`). With `tls` (a local
 * binary only), `url` is an HTTPS listener with that certificate, beside the dev mode's own plain one.
 */
export async function startVault(
  options: { tls?: { certFile: string; keyFile: string; caFile: string } } = {},
): Promise<VaultServer | { reason: string }> {
  const rootToken = `root-${randomBytes(8).toString('hex')}`;
  const bin = findBinary(['bao', 'vault']);
  if (bin) {
    const port = await freePort();
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-vault-'));
    const tlsArgs: string[] = [];
    let tlsUrls: { url: string; clientCertUrl: string } | null = null;
    if (options.tls) {
      // Each listener also takes the next port for its cluster address.
      const [httpsPort, mtlsPort] = [await freePort(), await freePort()];
      const { certFile, keyFile, caFile } = options.tls;
      const listener = (p: number, extra: string): string =>
        `listener "tcp" {\n  address = "127.0.0.1:${p}"\n  tls_cert_file = "${certFile}"\n  tls_key_file = "${keyFile}"\n${extra}}\n`;
      const file = path.join(dir, 'tls.hcl');
      writeFileSync(
        file,
        listener(httpsPort, '') +
          listener(mtlsPort, `  tls_require_and_verify_client_cert = true\n  tls_client_ca_file = "${caFile}"\n`),
      );
      tlsArgs.push(`-config=${file}`);
      tlsUrls = { url: `https://127.0.0.1:${httpsPort}`, clientCertUrl: `https://127.0.0.1:${mtlsPort}` };
    }
    const child = spawn(
      bin,
      ['server', '-dev', `-dev-root-token-id=${rootToken}`, `-dev-listen-address=127.0.0.1:${port}`, ...tlsArgs],
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
    return {
      url,
      rootToken,
      via: `${path.basename(bin)} server -dev${tlsUrls ? ' with TLS listeners' : ''} (${bin})`,
      kill: () => stop(child),
      release,
      ...tlsUrls,
    };
  }
  if (options.tls)
    return { reason: `no bao/vault binary in ${CACHE_BIN} or on PATH (a TLS listener needs a local server)` };
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

export interface PostgresServer {
  port: number;
  /** The superuser OpenBao's database engine manages roles with. */
  admin: { user: string; password: string };
  via: string;
  /** One SQL statement as the admin (psql), its rows as lines of `|`-separated fields. */
  query(sql: string): Promise<string[]>;
  release(): Promise<void>;
}

/**
 * A real PostgreSQL (Debian's package) on a free loopback port, in a fresh data directory. It
 * refuses to run as root, so as root it runs as the `postgres` system user. Logins over TCP use
 * the password method (clear text on loopback: the fixtures speak the wire protocol themselves).
 */
export async function startPostgres(): Promise<PostgresServer | { reason: string }> {
  const { readdirSync, writeFileSync, chmodSync, chownSync } = await import('node:fs');
  const { userInfo } = await import('node:os');
  const { execFile } = await import('node:child_process');
  const versions = existsSync('/usr/lib/postgresql')
    ? readdirSync('/usr/lib/postgresql').filter((v) => existsSync(`/usr/lib/postgresql/${v}/bin/initdb`))
    : [];
  const version = versions.sort((a, b) => Number(b) - Number(a))[0];
  const psql = findBinary(['psql']);
  if (!version || !psql)
    return {
      reason: `no PostgreSQL: /usr/lib/postgresql/*/bin/initdb or psql not found. Fix: bash scripts/install-test-servers.sh (apt package postgresql)`,
    };
  const bin = `/usr/lib/postgresql/${version}/bin`;
  let uid: number | undefined;
  let gid: number | undefined;
  if (userInfo().uid === 0) {
    const entry = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('postgres:'));
    if (!entry) return { reason: 'running as root and there is no "postgres" user to run PostgreSQL as' };
    const [, , u, g] = entry.split(':');
    uid = Number(u);
    gid = Number(g);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-pg-'));
  chmodSync(dir, 0o700);
  const password = randomBytes(12).toString('hex');
  writeFileSync(path.join(dir, 'pw'), password);
  if (uid !== undefined && gid !== undefined) {
    chownSync(dir, uid, gid);
    chownSync(path.join(dir, 'pw'), uid, gid);
  }
  const as = uid !== undefined ? { uid, gid } : {};
  const data = path.join(dir, 'data');
  await new Promise<void>((resolve, reject) =>
    execFile(
      `${bin}/initdb`,
      [
        '-D',
        data,
        '-U',
        'fleet_admin',
        '--auth-local=trust',
        '--auth-host=password',
        `--pwfile=${dir}/pw`,
        '-E',
        'UTF8',
      ],
      { ...as, env: { ...process.env, LC_ALL: 'C' } },
      (err, _o, e) => (err ? reject(new Error(`initdb failed: ${e || err.message}`)) : resolve()),
    ),
  );
  const port = await freePort();
  const child = spawn(
    `${bin}/postgres`,
    ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off'],
    { ...as, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const query = (sql: string): Promise<string[]> =>
    new Promise((resolve, reject) =>
      execFile(
        psql,
        [
          '-h',
          '127.0.0.1',
          '-p',
          String(port),
          '-U',
          'fleet_admin',
          '-d',
          'postgres',
          '-tA',
          '-v',
          'ON_ERROR_STOP=1',
          '-c',
          sql,
        ],
        { env: { ...process.env, PGPASSWORD: password, PGCONNECT_TIMEOUT: '5' } },
        (err, stdout, stderr) =>
          err ? reject(new Error(`psql: ${stderr || err.message}`)) : resolve(stdout.split('\n').filter(Boolean)),
      ),
    );
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`postgres exited with code ${child.exitCode}: ${out.slice(-2000)}`);
    try {
      await query('select 1');
      break;
    } catch (err) {
      if (Date.now() > deadline)
        throw new Error(`postgres did not come up in 30 s: ${String(err)} ${out.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    port,
    admin: { user: 'fleet_admin', password },
    via: `postgres ${version} (${bin}, as ${uid !== undefined ? 'postgres' : 'this user'})`,
    query,
    release: async () => {
      // SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for every client, OpenBao's pool among them).
      await stop(child, 'SIGINT');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The revocation statements docs/secrets.md recommends for a PostgreSQL role of the database engine. */
export function revocationStatements(admin: string): string[] {
  return [
    `ALTER ROLE "{{name}}" NOLOGIN VALID UNTIL 'now';`,
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';`,
    `REASSIGN OWNED BY "{{name}}" TO "${admin}";`,
    'DROP OWNED BY "{{name}}";',
    'DROP ROLE IF EXISTS "{{name}}";',
  ];
}

/**
 * OpenBao's database engine over `pg`: mounted at `database/`, one connection `pg` and one role
 * whose users may log in and read `orders` (created here with three rows). Returns the path that
 * mints a credential, `database/creds/<role>`.
 */
export async function setupDatabaseEngine(
  vault: { url: string; rootToken: string },
  pg: PostgresServer,
  role = 'orders',
  options: { defaultRevocation?: boolean } = {},
): Promise<string> {
  const root = async (p: string, body: unknown): Promise<void> => {
    const r = await fetch(`${vault.url}/v1/${p}`, {
      method: 'POST',
      headers: { 'X-Vault-Token': vault.rootToken },
      body: JSON.stringify(body),
    });
    if (!r.ok) throw new Error(`POST ${p}: ${r.status} ${await r.text()}`);
  };
  await pg.query(
    'create table if not exists orders (id int); insert into orders select generate_series(1, 3) where not exists (select 1 from orders)',
  );
  const mounted = await fetch(`${vault.url}/v1/sys/mounts`, { headers: { 'X-Vault-Token': vault.rootToken } });
  if (!JSON.stringify(await mounted.json()).includes('"database/"'))
    await root('sys/mounts/database', { type: 'database' });
  await root('database/config/pg', {
    plugin_name: 'postgresql-database-plugin',
    connection_url: `postgresql://{{username}}:{{password}}@127.0.0.1:${pg.port}/postgres?sslmode=disable`,
    username: pg.admin.user,
    password: pg.admin.password,
    allowed_roles: ['*'],
  });
  await root(`database/roles/${role}`, {
    db_name: 'pg',
    creation_statements: [
      `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
      'GRANT SELECT ON orders TO "{{name}}";',
    ],
    // What docs/secrets.md recommends: the login ends first, then whatever the user came to own (default
    // privileges a job can set on its own included, which would make a plain DROP ROLE fail).
    ...(options.defaultRevocation ? {} : { revocation_statements: revocationStatements(pg.admin.user) }),
    default_ttl: '1h',
    max_ttl: '24h',
  });
  return `database/creds/${role}`;
}
