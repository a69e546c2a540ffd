import { auditStreamKey, supervisorsKey } from '../redis/keys.js';
import { REDIS_ROLES, rolePasswordEnv, type RedisAccess } from '../redis/acl.js';
import { aclGetUser, configGet, connectRedis, ensureReady, stringList } from '../redis/connection.js';
import { redisUrlNodes, redisUrlProblem } from '../config/redis-url.js';
import { isLoopbackHost } from '../config/hosts.js';
import { isRedisTlsUrl, tlsVerificationOff } from '../config/tls.js';
import { readSupervisorStatuses } from '../workers/supervisor-status.js';
import type { RedisClient } from '../redis/connection.js';
import { auditKeyProvider, type FleetConfig } from '../config/resolve.js';
import { scheduleOf } from '../config/schedule.js';
import { CRITICAL_MAX_TIMEOUT_MS } from '../config/schema.js';
import { z } from 'zod';
import { fieldOf, toError } from '../errors.js';
import { silentLogger } from '../observability/logger.js';
import { MAX_AGE_MS, secretHealth } from '../rotation/secret-health.js';
import { PROVIDER_KINDS, type ProviderKind, type SecretMetadata } from '../secrets/provider.js';
import { makeProvider, providerOfKind } from '../secrets/providers.js';

/** The part of Prometheus's /api/v1/targets answer the monitoring check reads. */
const prometheusTargets = z.object({
  data: z.object({ activeTargets: z.array(z.object({ labels: z.object({ job: z.string() }), health: z.string() })) }),
});

export type CheckStatus = 'PASS' | 'WARN' | 'FAIL';
export interface Check {
  status: CheckStatus;
  check: string;
  detail: string;
  fix?: string;
}

export interface DoctorOptions {
  /** Production rules (no `local` secrets, persistence required). @defaultValue NODE_ENV === 'production' */
  production: boolean;
  /** URLs whose /metrics must answer (API, supervisors). */
  metricsUrls: string[];
  /** A Prometheus to ask whether it scrapes the fleet. */
  prometheusUrl?: string;
  /** Each Redis role's identity, to check that none runs as `default` or with more than its rights. */
  access?: RedisAccess;
}

/**
 * Harmless forms of what no role may run: each does nothing even where it is allowed (trim below
 * the first id, delete an id that cannot exist, match keys that do not exist, read one setting).
 */
function forbiddenProbes(prefix: string): { what: string; args: [string, ...string[]] }[] {
  const audit = auditStreamKey(prefix);
  return [
    { what: 'CONFIG', args: ['CONFIG', 'GET', 'maxmemory'] },
    { what: 'KEYS', args: ['KEYS', `${prefix}:doctor-probe-none-*`] },
    { what: 'DEBUG', args: ['DEBUG', 'SLEEP', '0'] },
    { what: 'ACL', args: ['ACL', 'LIST'] },
    { what: 'FUNCTION', args: ['FUNCTION', 'LIST', 'LIBRARYNAME', 'doctor-probe-none'] },
    { what: 'XDEL on the audit stream', args: ['XDEL', audit, '0-1'] },
    { what: 'XTRIM on the audit stream', args: ['XTRIM', audit, 'MINID', '0'] },
    { what: 'RENAME on the audit stream', args: ['RENAME', audit, audit] },
    // PERSIST (no TTL to remove) stands for the keyspace writes (DEL, EXPIRE, UNLINK): one rule allows or refuses them all.
    { what: 'keyspace writes (DEL, EXPIRE) on the audit stream', args: ['PERSIST', audit] },
  ];
}

/** Per role: its own ACL user (not `default`), and refused on every forbidden command. */
export async function redisRoleChecks(config: FleetConfig, access: RedisAccess, production: boolean): Promise<Check[]> {
  const out: Check[] = [];
  for (const role of REDIS_ROLES) {
    const what = `redis role ${role}`;
    if (!access.hasRole(role)) {
      out.push(
        (production ? fail : warn)(
          what,
          `no credentials of its own (${rolePasswordEnv(role)}): it connects with REDIS_URL's identity, which can do anything`,
          'run `fleet redis setup` with an admin REDIS_URL and give each role its password',
        ),
      );
      continue;
    }
    const redis = connectRedis(access.urlFor(role), 'producer', { lazyConnect: true, tls: config.redis.tls });
    redis.on('error', () => undefined);
    try {
      await ensureReady(redis);
      const user = String(await redis.call('ACL', 'WHOAMI'));
      if (user === 'default') {
        out.push(fail(what, 'runs as the `default` user', 'run `fleet redis setup` and use the fleet-<role> users'));
        continue;
      }
      const allowed: string[] = [];
      for (const probe of forbiddenProbes(config.redis.prefix)) {
        const args = probe.args;
        if (probe.what.startsWith('XTRIM') && role === 'retention') continue;
        try {
          await redis.call(...args);
          allowed.push(probe.what);
        } catch (err) {
          // DEBUG may also be refused by the server itself (enable-debug-command no), before the ACL.
          if (!/NOPERM|DEBUG command not allowed/.test(toError(err).message))
            allowed.push(`${probe.what} (answered: ${toError(err).message.slice(0, 60)})`);
        }
      }
      out.push(
        allowed.length
          ? fail(
              what,
              `user ${user} may run ${allowed.join(', ')}: more than the role needs`,
              'run `fleet redis setup` again to reset its rules',
            )
          : pass(
              what,
              `user ${user}, refused CONFIG, KEYS, DEBUG, ACL and deleting or trimming the audit stream${role === 'retention' ? ' (may trim: the retention path)' : ''}`,
            ),
      );
    } catch (err) {
      out.push(
        fail(
          what,
          `cannot connect as its user: ${toError(err).message}`,
          `check ${rolePasswordEnv(role)} and that \`fleet redis setup\` ran on this Redis`,
        ),
      );
    } finally {
      redis.disconnect();
    }
  }
  return out;
}

const orList = (kinds: readonly string[]): string => `${kinds.slice(0, -1).join(', ')} or ${kinds.at(-1) ?? ''}`;
/** The providers a production secret may use: every one but the dev-only local store (`"vault", "kms" or …`). */
const EXTERNAL = orList(PROVIDER_KINDS.filter((k) => k !== 'local').map((k) => `"${k}"`));
/** The fleet's own keys (audit MAC key) need a store that keeps versions and can create them: not exec. */
const EXTERNAL_STORE = orList(PROVIDER_KINDS.filter((k) => k !== 'local' && k !== 'exec').map((k) => `"${k}"`));

const pass = (check: string, detail: string): Check => ({ status: 'PASS', check, detail });
const warn = (check: string, detail: string, fix: string): Check => ({ status: 'WARN', check, detail, fix });
const fail = (check: string, detail: string, fix: string): Check => ({ status: 'FAIL', check, detail, fix });

/** One service's URL: TLS passes; plain TCP passes on loopback only, else fails in production. */
function transportCheck(
  check: string,
  production: boolean,
  how: { tls: boolean; hosts: string[]; trust: string; fix: string },
): Check {
  const shown = how.hosts.join(', ');
  if (how.tls) return pass(check, `TLS to ${shown} (${how.trust})`);
  const remote = how.hosts.filter((h) => !isLoopbackHost(h));
  if (!remote.length) return pass(check, `plain TCP to ${shown}: loopback only`);
  return (production ? fail : warn)(
    check,
    `plain TCP to ${remote.join(', ')}, not loopback: credentials, secrets and job data cross the network in clear`,
    how.fix,
  );
}

const trustOf = (files: { caFile?: string; certFile?: string }, env: string): string =>
  `${files.caFile ? `CA ${files.caFile}` : `Node's bundled roots (no ${env})`}${files.certFile ? ', client certificate' : ''}`;

/**
 * Every connection that leaves the process: Redis (the shared URL every role's URL is built from,
 * and the admin URL of each redis-acl rotation), Vault, a KMS endpoint, and the API. Decided on the
 * configured URLs alone (no connection), so it also judges a config before its deployment.
 */
export function transportChecks(
  config: FleetConfig,
  options: { production: boolean; redisUrl?: string | undefined; env?: NodeJS.ProcessEnv },
): Check[] {
  const env = options.env ?? process.env;
  const out: Check[] = [];
  const redisUrls = new Map<string, string>();
  const shared = options.redisUrl ?? config.redis.url;
  if (shared) redisUrls.set('redis: transport', shared);
  for (const item of Object.values(config.secrets.items)) {
    const r = item.rotation?.rotator;
    const url = r?.type === 'redis-acl' ? env[r.adminUrlEnv] : undefined;
    if (r?.type === 'redis-acl' && url) redisUrls.set(`redis: transport (${r.adminUrlEnv})`, url);
  }
  const redisFix =
    'use rediss:// (rediss-cluster:// for a cluster) with redis.tls.caFile / REDIS_TLS_CA_FILE, Redis serving tls-port (docs/operations.md#tls)';
  for (const [check, url] of redisUrls) {
    // Judged on the parse the connection makes; a URL two parsers read differently is refused.
    const problem = redisUrlProblem(url);
    if (problem) {
      out.push(fail(check, `the URL ${problem.reason}`, problem.fix));
      continue;
    }
    out.push(
      transportCheck(check, options.production, {
        tls: isRedisTlsUrl(url),
        hosts: redisUrlNodes(url).map((n) => n.host),
        trust: trustOf(config.redis.tls, 'REDIS_TLS_CA_FILE'),
        fix: redisFix,
      }),
    );
  }
  const http = (check: string, url: string, trust: string, fix: string): void => {
    let host: string;
    try {
      host = new URL(url).hostname;
    } catch {
      out.push(fail(check, 'not a URL', fix));
      return;
    }
    out.push(transportCheck(check, options.production, { tls: url.startsWith('https://'), hosts: [host], trust, fix }));
  };
  const vault = config.secrets.vault;
  const vaultAddress = vault ? (vault.address ?? env.VAULT_ADDR) : undefined;
  if (vault && vaultAddress)
    http(
      'vault: transport',
      vaultAddress,
      trustOf(vault.tls, 'VAULT_CACERT'),
      'use the https:// address of Vault with secrets.vault.tls.caFile / VAULT_CACERT (docs/operations.md#tls)',
    );
  const kmsEndpoint = config.secrets.kms?.endpoint;
  if (kmsEndpoint)
    http(
      'kms: transport',
      kmsEndpoint,
      "Node's bundled roots",
      'use an https:// endpoint for secrets.kms.endpoint (KMS answers carry plaintext data keys)',
    );
  const verificationOff = tlsVerificationOff(env);
  out.push(
    verificationOff
      ? fail('tls: certificate verification', verificationOff.reason, verificationOff.fix)
      : pass('tls: certificate verification', 'on (NODE_TLS_REJECT_UNAUTHORIZED is not 0)'),
  );
  const api = config.api;
  out.push(
    api.tls.certFile
      ? pass('api: transport', `HTTPS on ${api.host} (${api.tls.certFile})`)
      : isLoopbackHost(api.host)
        ? pass('api: transport', `plain HTTP on ${api.host}: loopback only (a local TLS proxy in front, or local use)`)
        : warn(
            'api: transport',
            `plain HTTP on ${api.host}: bearer tokens and payloads are in clear unless a TLS-terminating proxy is in front`,
            'set api.tls (FLEET_API_TLS_CERT_FILE / FLEET_API_TLS_KEY_FILE), or listen on 127.0.0.1 behind a TLS proxy',
          ),
  );
  return out;
}

/** Secrets come from an external manager (the local store is for development). */
function secretSourceChecks(config: FleetConfig, redis: RedisClient, options: DoctorOptions): Check[] {
  const out: Check[] = [];
  for (const [name, kind] of config.secretProviders) {
    if (kind === 'local') {
      out.push(
        options.production
          ? fail(
              `secret ${name}: external provider`,
              'served by the dev-only local store',
              `set secrets.items.${name}.provider (or secrets.provider) to ${EXTERNAL}`,
            )
          : warn(
              `secret ${name}: external provider`,
              'served by the dev-only local store (fine for development)',
              `use ${EXTERNAL} in production`,
            ),
      );
    } else out.push(pass(`secret ${name}: external provider`, kind));
  }

  const macKind = auditKeyProvider(config);
  const macCheck = `audit MAC key ${config.secrets.audit.macKey}: external provider`;
  if (macKind === 'local')
    out.push(
      (options.production ? fail : warn)(
        macCheck,
        'in the dev-only local store, whose master key sits beside the data',
        `set secrets.items.${config.secrets.audit.macKey}.provider (or secrets.provider) to ${EXTERNAL_STORE}`,
      ),
    );
  else out.push(pass(macCheck, macKind));
  return out;
}

/** Secrets a type holds in its sandbox although they could be injected at egress. */
function injectionChecks(config: FleetConfig): Check[] {
  const out: Check[] = [];
  for (const t of config.jobTypes.values()) {
    for (const [name, mode] of t.secretModes) {
      const binding = config.secrets.items[name]?.binding;
      if (mode === 'deliver' && binding)
        out.push(
          warn(
            `job type ${t.name}: secret ${name} mode`,
            `delivered into the sandbox although it has a binding (${binding.hosts.join(', ')}): a compromised processor can read and leak it`,
            `take it as "${name}" (inject, the default with a binding) unless the job needs the value itself`,
          ),
        );
      else if (mode === 'inject')
        out.push(
          pass(
            `job type ${t.name}: secret ${name} mode`,
            `injected at egress toward ${binding?.hosts.join(', ')}; the sandbox holds a placeholder`,
          ),
        );
    }
  }
  return out;
}

/** Critical work: request-bound execution with a short timeout; concurrency caps. */
function isolationChecks(config: FleetConfig): Check[] {
  const out: Check[] = [];
  for (const t of config.jobTypes.values()) {
    if (t.sensitivity === 'critical') {
      out.push(
        t.isolation === 'job' && t.timeoutMs <= CRITICAL_MAX_TIMEOUT_MS
          ? pass(
              `job type ${t.name}: critical isolation`,
              `fresh sandbox per job (auto-destroy), timeout ${t.timeoutMs} ms`,
            )
          : fail(
              `job type ${t.name}: critical isolation`,
              `isolation ${t.isolation}, timeout ${t.timeoutMs} ms`,
              'isolation "job" and timeoutMs ≤ 120000',
            ),
      );
      out.push(
        t.globalConcurrency !== undefined
          ? pass(
              `job type ${t.name}: concurrency caps`,
              `${t.concurrency} per supervisor, ${t.globalConcurrency} fleet-wide`,
            )
          : warn(
              `job type ${t.name}: concurrency caps`,
              `${t.concurrency} per supervisor, no fleet-wide cap`,
              `set jobTypes.${t.name}.globalConcurrency`,
            ),
      );
    } else {
      out.push(
        pass(
          `job type ${t.name}: concurrency caps`,
          `${t.concurrency} per supervisor${t.globalConcurrency ? `, ${t.globalConcurrency} fleet-wide` : ''}`,
        ),
      );
      if (t.timeoutMs > 300_000 && t.isolation === 'pool')
        out.push(
          warn(
            `job type ${t.name}: timeout`,
            `${t.timeoutMs} ms in a reused sandbox`,
            'routine work: ≤ 300 s, or a concurrency limit for long-running work',
          ),
        );
    }
  }
  return out;
}

/** Critical types need the OS layer (namespaces) in production. */
async function osLayerChecks(config: FleetConfig, redis: RedisClient, options: DoctorOptions): Promise<Check[]> {
  const out: Check[] = [];
  // Without it a compromised processor keeps the host's network and can fill disk (see
  // docs/security.md#threat-model).
  const { live: reports, invalid } = await readSupervisorStatuses(
    redis,
    config.redis.prefix,
    config.supervisor.heartbeatMs,
  ).catch(() => ({ live: [], invalid: [] }));
  if (invalid.length)
    out.push(
      warn(
        'supervisors: heartbeats',
        `${invalid.length} record(s) in ${supervisorsKey(config.redis.prefix)} are not valid heartbeats: ${invalid.slice(0, 5).join(', ')}`,
        'find what writes them; only supervisors should (Redis ACLs)',
      ),
    );
  for (const t of config.jobTypes.values()) {
    if (t.sensitivity !== 'critical') continue;
    const seen = reports.flatMap((r) =>
      r.types.filter((x) => x.jobType === t.name && x.layers.length).map((x) => ({ id: r.id, layers: x.layers })),
    );
    const without = seen.filter((x) => !x.layers.includes('namespaces'));
    const what = `job type ${t.name}: sandbox OS layer`;
    if (!seen.length)
      out.push(warn(what, 'no running supervisor reports this type', 'start a worker, then run fleet doctor again'));
    else if (without.length)
      out.push(
        (options.production ? fail : warn)(
          what,
          `runs without namespaces on ${without.map((x) => x.id).join(', ')} (layers: ${without[0]?.layers.join('+')})`,
          'install bubblewrap and allow user namespaces on the worker hosts (docs/operations.md#deploy), or set supervisor.osLayer: "required"',
        ),
      );
    else out.push(pass(what, `${seen[0]?.layers.join('+')} on ${seen.length} supervisor(s)`));
    // And the kernel's caps: without a cgroup one job can take the memory and processes of every
    // other job on the host (docs/security.md#what-holds-with-and-without-the-os-layer).
    if (seen.length) {
      const uncapped = seen.filter((x) => !x.layers.includes('cgroup'));
      const limits = `job type ${t.name}: memory and process limits`;
      if (uncapped.length)
        out.push(
          (options.production ? fail : warn)(
            limits,
            `runs without a cgroup (memoryLimitMb ${t.memoryLimitMb}, maxProcesses ${t.maxProcesses} not enforced) on ${uncapped.map((x) => x.id).join(', ')}`,
            'run the supervisor with a writable cgroup subtree (root, systemd Delegate=yes, or a container with its own cgroup namespace; docs/security.md#resource-limits-from-the-kernel), or set supervisor.resourceLimits: "required"',
          ),
        );
      else out.push(pass(limits, `cgroup: ${t.memoryLimitMb} MB, ${t.maxProcesses} processes`));
    }
  }

  if (options.access) out.push(...(await redisRoleChecks(config, options.access, options.production)));
  return out;
}

/** Redis: no eviction and persistence; each role's ACL user. */
async function redisServerChecks(config: FleetConfig, redis: RedisClient, options: DoctorOptions): Promise<Check[]> {
  const out: Check[] = [];
  // CONFIG needs an admin identity (the roles may not read it): the embedded server's, or REDIS_URL's own.
  const adminUrl = options.access?.admin ? options.access.adminUrl() : options.access?.url;
  const admin = adminUrl ? connectRedis(adminUrl, 'producer', { lazyConnect: true, tls: config.redis.tls }) : redis;
  admin.on('error', () => undefined);
  try {
    if (admin !== redis) await ensureReady(admin);
    const policy = await configGet(admin, 'maxmemory-policy');
    out.push(
      policy === 'noeviction'
        ? pass('redis: eviction policy', 'noeviction')
        : fail(
            'redis: eviction policy',
            policy,
            'redis-server --maxmemory-policy noeviction (evicted keys are lost jobs)',
          ),
    );
    const aof = await configGet(admin, 'appendonly');
    const save = await configGet(admin, 'save');
    if (aof === 'yes') {
      out.push(pass('redis: persistence', 'AOF on'));
      // Redis replays the AOF's MULTI/EXEC blocks as `default` and re-checks its ACL (redis/redis#14541).
      const user = await aclGetUser(admin, 'default');
      if (user) {
        const flags = stringList(user.get('flags'));
        const commands = String(user.get('commands') ?? '');
        out.push(
          flags.includes('off') || !commands.startsWith('+@all')
            ? fail(
                'redis: default user and AOF',
                `the default user is ${flags.includes('off') ? 'off' : `restricted (${commands.slice(0, 40)})`}: Redis replays the AOF's transactions as default and drops the ones it may not run (redis/redis#14541), so a restart silently loses jobs and audit records`,
                'keep default on with +@all ~* &* behind a strong password (it is the admin); give the fleet the fleet-<role> users',
              )
            : flags.includes('nopass')
              ? (options.production ? fail : warn)(
                  'redis: default user',
                  'no password: whoever reaches Redis has every right, and the per-role users protect nothing',
                  'requirepass <strong password> (default stays the admin); the fleet uses the fleet-<role> users',
                )
              : pass(
                  'redis: default user and AOF',
                  'default keeps its rights (AOF transactions replay), behind a password',
                ),
        );
      }
    } else if (save)
      out.push(
        warn(
          'redis: persistence',
          `RDB snapshots only (${save}): jobs since the last snapshot are lost on a crash`,
          'redis-server --appendonly yes',
        ),
      );
    else
      out.push(
        (options.production ? fail : warn)(
          'redis: persistence',
          'none: a restart loses every queued job',
          'redis-server --appendonly yes',
        ),
      );
  } catch (err) {
    out.push(
      warn(
        'redis: settings',
        `could not read CONFIG (${toError(err).message}); managed Redis, or REDIS_URL without an admin user?`,
        'confirm noeviction and persistence with your provider, or run fleet doctor with an admin user in REDIS_URL',
      ),
    );
  } finally {
    if (admin !== redis) admin.disconnect();
  }
  return out;
}

/** Audit trail: retention keeps up, and the MAC chain verifies. */
async function auditChecks(config: FleetConfig, redis: RedisClient): Promise<Check[]> {
  const out: Check[] = [];
  try {
    const length = await redis.xlen(auditStreamKey(config.redis.prefix));
    const max = config.secrets.audit.maxEntries;
    out.push(
      length > max * 2
        ? warn(
            'audit: retention',
            `${length} records, over twice secrets.audit.maxEntries (${max})`,
            'run a scheduler role (it trims behind signed checkpoints with the retention Redis role)',
          )
        : pass('audit: retention', `${length} records (limit ${max})`),
    );
    if (length === 0) throw Object.assign(new Error('no records yet'), { empty: true });
    const { auditVerify } = await import('./trail-commands.js');
    const r = await auditVerify(config, redis, {});
    out.push(
      r.ok
        ? pass('audit: MAC chain', `${r.records} records from ${r.writers} writer(s) verify`)
        : fail(
            'audit: MAC chain',
            `broken at ${r.firstBreak?.at} (writer ${r.firstBreak?.writer}): ${r.firstBreak?.reason}`,
            'someone with Redis access changed the audit stream: compare with the exported copy; find the credential used',
          ),
    );
  } catch (err) {
    if (fieldOf(err, 'empty') === true) out.push(pass('audit: MAC chain', 'no records yet'));
    else
      out.push(
        warn(
          'audit: MAC chain',
          `not verified: ${toError(err).message}`,
          'fleet audit verify with an identity that can read secrets.audit.macKey',
        ),
      );
  }
  return out;
}

/** Providers: credentials valid, Vault policies present, KMS key reachable; returns the stored secrets' metadata. */
async function providerChecks(
  config: FleetConfig,
  redis: RedisClient,
): Promise<{ checks: Check[]; meta: Map<string, SecretMetadata> }> {
  const out: Check[] = [];
  const meta = new Map<string, SecretMetadata>();
  for (const kind of new Set<ProviderKind>(config.secretProviders.values())) {
    let provider;
    try {
      provider = await makeProvider(kind, config, { redis, logger: silentLogger });
      await provider.check();
      out.push(
        pass(
          `${kind}: credentials`,
          kind === 'vault'
            ? 'supervisor token valid'
            : kind === 'kms'
              ? `key ${config.secrets.kms?.keyId} reachable`
              : kind === 'exec'
                ? `program(s) ${Object.keys(config.secrets.exec ?? {}).join(', ')}: absolute, no symlink, owned by root or this user, writable by no one else (not run)`
                : kind === 'secrets-manager'
                  ? `secrets under "${config.secrets.secretsManager.namePrefix}" listable`
                  : 'master key readable',
        ),
      );
      for (const m of await provider.list().catch(() => [])) meta.set(m.name, m);
      if (kind === 'kms') {
        const on = await providerOfKind(provider, 'kms').keyRotationEnabled();
        out.push(
          on
            ? pass('kms: customer key rotation', 'automatic rotation on')
            : warn(
                'kms: customer key rotation',
                'automatic rotation off',
                'set secrets.kms.enableKeyRotation (the scheduler turns it on) or aws kms enable-key-rotation',
              ),
        );
      }
      if (kind === 'vault') {
        for (const t of config.jobTypes.values()) {
          const names = t.secrets.filter((n) => config.secretProviders.get(n) === 'vault');
          if (!names.length) continue;
          const problem = await providerOfKind(provider, 'vault').probeJobPolicy(t.name, names);
          out.push(
            problem
              ? fail(`vault: policy for ${t.name}`, problem, 'run `fleet vault setup` with an admin token')
              : pass(`vault: policy for ${t.name}`, `job token reads exactly ${names.join(', ')}`),
          );
        }
      }
    } catch (err) {
      out.push(
        fail(
          `${kind}: credentials`,
          toError(err).message,
          kind === 'vault'
            ? 'check VAULT_ADDR and the AppRole (VAULT_ROLE_ID/VAULT_SECRET_ID)'
            : kind === 'kms'
              ? 'check secrets.kms.keyId/region/endpoint and AWS credentials'
              : kind === 'exec'
                ? 'see the fix named for each program under secrets.exec'
                : kind === 'secrets-manager'
                  ? 'check secrets.secretsManager.region/endpoint and AWS credentials (secretsmanager:ListSecrets)'
                  : 'check the master key',
        ),
      );
    } finally {
      await provider?.close();
    }
  }
  return { checks: out, meta };
}

/** Rotation: every secret has a policy within its kind's limit, nothing overdue or failing. */
async function rotationChecks(
  config: FleetConfig,
  redis: RedisClient,
  meta: ReadonlyMap<string, SecretMetadata>,
): Promise<Check[]> {
  const out: Check[] = [];
  for (const h of await secretHealth(config, redis, meta)) {
    const policy = config.secrets.items[h.secret]?.rotation;
    const limit = MAX_AGE_MS[h.kind];
    if (config.secrets.items[h.secret]?.dynamic) {
      out.push(pass(`secret ${h.secret}: rotation policy`, 'dynamic: minted per job, destroyed at its end'));
      continue;
    }
    if (h.provider === 'exec') {
      // Read-only: fleet neither rotates it nor sees its age.
      out.push(
        warn(
          `secret ${h.secret}: rotation policy`,
          "served by the exec provider: rotated in the program's own store, where fleet cannot see its age",
          `rotate it there ${h.kind === 'encryption-key' ? 'daily' : 'at least weekly'} (1Password, Bitwarden, sops, …)`,
        ),
      );
      continue;
    }
    if (!policy) {
      out.push(
        fail(
          `secret ${h.secret}: rotation policy`,
          'none',
          `add secrets.items.${h.secret}.rotation (${h.kind === 'encryption-key' ? 'daily' : 'weekly or more often'})`,
        ),
      );
      continue;
    }
    const interval = scheduleOf(policy.schedule).intervalMs;
    if (interval === null)
      out.push(
        warn(
          `secret ${h.secret}: rotation policy`,
          `cron "${policy.schedule}": cadence not checked`,
          `make sure it runs at least every ${limit / 86_400_000} day(s)`,
        ),
      );
    else if (interval > limit)
      out.push(
        fail(
          `secret ${h.secret}: rotation policy`,
          `every ${Math.round(interval / 3_600_000)} h, longer than allowed for ${h.kind} (${limit / 3_600_000} h)`,
          `rotate ${h.kind === 'encryption-key' ? 'daily' : 'at least weekly'}`,
        ),
      );
    else out.push(pass(`secret ${h.secret}: rotation policy`, `${policy.schedule} (${policy.rotator.type})`));
    if (h.overdue)
      out.push(
        fail(
          `secret ${h.secret}: rotation due`,
          `overdue since ${new Date(h.nextDueAt ?? 0).toISOString()}`,
          'run a scheduler role, or fleet rotate ' + h.secret,
        ),
      );
    else if (h.rotation.lastOutcome === 'failed')
      out.push(
        fail(
          `secret ${h.secret}: last rotation`,
          `failed at step ${h.rotation.lastFailedStep}: ${h.rotation.lastError}`,
          `fleet audit --secret ${h.secret}; fix the rotator, then fleet rotate ${h.secret} --now`,
        ),
      );
    else
      out.push(
        pass(
          `secret ${h.secret}: rotation due`,
          h.nextDueAt ? `next ${new Date(h.nextDueAt).toISOString()}` : 'scheduled',
        ),
      );
  }
  return out;
}

/** Monitoring: the metrics endpoints answer and Prometheus scrapes the fleet. */
async function monitoringChecks(config: FleetConfig, redis: RedisClient, options: DoctorOptions): Promise<Check[]> {
  const out: Check[] = [];
  if (!options.metricsUrls.length)
    out.push(
      warn('monitoring: metrics endpoint', 'no --metrics-url given', 'pass the API and supervisor /metrics URLs'),
    );
  for (const url of options.metricsUrls) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
      const body = await r.text();
      out.push(
        r.ok && body.includes('fleet_')
          ? pass(`monitoring: ${url}`, 'serves fleet metrics')
          : fail(`monitoring: ${url}`, `HTTP ${r.status}`, 'is the process running with that port?'),
      );
    } catch (err) {
      out.push(fail(`monitoring: ${url}`, toError(err).message, 'is the process running with that port?'));
    }
  }
  if (options.prometheusUrl) {
    try {
      const r = prometheusTargets.parse(
        await (await fetch(`${options.prometheusUrl}/api/v1/targets`, { signal: AbortSignal.timeout(3000) })).json(),
      );
      const fleet = r.data.activeTargets.filter((t) => t.labels.job.startsWith('fleet'));
      const down = fleet.filter((t) => t.health !== 'up');
      out.push(
        !fleet.length
          ? fail(
              'monitoring: prometheus targets',
              'no fleet-* scrape jobs',
              'add the fleet to the scrape config (deploy/prometheus.yml)',
            )
          : down.length
            ? fail('monitoring: prometheus targets', `${down.length} of ${fleet.length} down`, 'check the targets page')
            : pass('monitoring: prometheus targets', `${fleet.length} fleet targets up`),
      );
    } catch (err) {
      out.push(fail('monitoring: prometheus', toError(err).message, 'check --prometheus-url'));
    }
  }
  return out;
}

/**
 * The pre-deploy checklist of the zero-trust rules, as named checks in a fixed order.
 */
export async function doctor(config: FleetConfig, redis: RedisClient, options: DoctorOptions): Promise<Check[]> {
  const providers = await providerChecks(config, redis);
  return [
    ...transportChecks(config, { production: options.production, redisUrl: options.access?.url }),
    ...secretSourceChecks(config, redis, options),
    ...injectionChecks(config),
    ...isolationChecks(config),
    ...(await osLayerChecks(config, redis, options)),
    ...(await redisServerChecks(config, redis, options)),
    ...(await auditChecks(config, redis)),
    ...providers.checks,
    ...(await rotationChecks(config, redis, providers.meta)),
    ...(await monitoringChecks(config, redis, options)),
  ];
}

export function renderChecks(checks: Check[]): string {
  return checks
    .map((c) => `${c.status.padEnd(4)}  ${c.check}: ${c.detail}${c.fix ? `  → fix: ${c.fix}` : ''}`)
    .join('\n');
}
