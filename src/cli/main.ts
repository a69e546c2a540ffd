import { parseArgs } from 'node:util';
import { Queue } from 'bullmq';
import { discoverRedisAccess, ROLES, startFleet } from '../app.js';
import { REDIS_ROLES, roleCredentialsFromEnv, rolePasswordEnv, roleRules, type RedisRole } from '../redis/acl.js';
import * as trail from './trail-commands.js';
import { loadConfig, type FleetConfig } from '../config/resolve.js';
import { FLEET_PRODUCER_NAMES } from '../config/schema.js';
import { FleetError, fieldOf, toError } from '../errors.js';
import { isOneOf } from '../guards.js';
import { makeLogger } from '../observability/logger.js';
import { Producer } from '../producers/producer.js';
import { connectRedis, ensureReady } from '../redis/connection.js';
import { queuePrefix } from '../redis/keys.js';
import { queueDepths, readSupervisorStatuses, type SupervisorStatus } from '../workers/supervisor-status.js';
import type { RedisClient } from '../redis/connection.js';
import * as sec from './secrets-commands.js';
import { doctor, renderChecks } from './doctor/doctor.js';
import { requestRotation, rotationQueue } from '../rotation/rotation-service.js';

const USAGE = `fleet — sandboxed job fleet on BullMQ

Usage:
  fleet start [--role api|worker|scheduler|all] [--metrics-port N]
                                           run the fleet (default role: all); --metrics-port or
                                           FLEET_METRICS_PORT overrides supervisor.metricsPort (0: a free port)
  fleet enqueue <type> <json> [--idempotency-key K]
  fleet job <id>                           state, attempts, timings, result or error
  fleet status [--workers] [--secrets]     supervisors, sandboxes, queue depths; secrets and their use
  fleet secrets set <name> [--provider P]  store a new version; the value is read from stdin
  fleet secrets list | delete <name>
  fleet audit [--since 24h] [--secret X] [--denied] [--limit N]
  fleet audit verify [--since 24h] [--file F]
                                           check the audit MAC chain (Redis, or an exported file);
                                           exits 1 at a deleted, inserted, edited or reordered record
  fleet audit export [--since 24h]         the audit stream as JSON lines with MACs (stdout)
  fleet audit init-key                     create the audit MAC key (secrets.audit.macKey) if missing
  fleet redis setup [--role R]... [--keep-old | --drop-old]
                                           write the per-role ACL users (admin REDIS_URL) and print
                                           their passwords; --keep-old keeps current passwords valid
                                           (rotation), --drop-old then removes them
  fleet redis rules                        the ACL rules of each role, as ACL SETUSER lines
  fleet vault setup                        write Vault policies, token role and AppRoles (admin VAULT_TOKEN)
  fleet rotate <secret> [--now]            rotate outside the schedule (--now: wait for the result)
  fleet kms rotate-key                     rotate the KMS customer key now (RotateKeyOnDemand)
  fleet kms ensure-key                     create the key secrets.kms.keyId names, when it is an alias to no key
  fleet doctor [--production] [--metrics-url U]... [--prometheus-url U]
                                           pre-deploy checklist; exits 1 if any check FAILs

Options:
  --config <path>   config file (default: $FLEET_CONFIG or ./fleet.config.{ts,js,mjs,json})
  --json            machine-readable output
  -h, --help        this text`;

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

/** The Redis URL for a command, as the Redis role that command needs (see `fleet redis setup`). */
function need(config: FleetConfig, role: RedisRole): string {
  const access = discoverRedisAccess(config);
  if (!access)
    throw new FleetError(
      'REDIS_UNAVAILABLE',
      'no Redis to talk to. Fix: set REDIS_URL, or run `npm start` (which starts a private Redis) in this folder first.',
    );
  return access.urlFor(role);
}

async function withProducer<T>(config: FleetConfig, role: 'api' | 'ops', fn: (p: Producer) => Promise<T>): Promise<T> {
  // The ops role reads: it holds no data key, and shows data sealed at rest as it is stored.
  const p = new Producer({
    config,
    redis: need(config, role),
    name: FLEET_PRODUCER_NAMES.cli,
    ...(role === 'ops' ? { dataKeys: null } : {}),
  });
  try {
    return await fn(p);
  } finally {
    await p.close();
  }
}

async function withRedis<T>(config: FleetConfig, role: RedisRole, fn: (r: RedisClient) => Promise<T>): Promise<T> {
  const redis = connectRedis(need(config, role), 'producer', { tls: config.redis.tls });
  redis.on('error', () => undefined);
  try {
    await ensureReady(redis);
    return await fn(redis);
  } finally {
    redis.disconnect();
  }
}

function status(
  config: FleetConfig,
): Promise<{ supervisors: SupervisorStatus[]; queues: Record<string, Record<string, number>> }> {
  return withRedis(config, 'ops', async (redis) => {
    const { live: supervisors } = await readSupervisorStatuses(
      redis,
      config.redis.prefix,
      config.supervisor.heartbeatMs,
    );
    const queues: Record<string, Record<string, number>> = {};
    for (const name of config.jobTypes.keys()) {
      const q = new Queue(name, { connection: redis, prefix: queuePrefix(config.redis.prefix, name) });
      queues[name] = await queueDepths(q);
      await q.close();
    }
    return { supervisors, queues };
  });
}

function renderStatus(s: Awaited<ReturnType<typeof status>>): string {
  const lines = [`supervisors: ${s.supervisors.length}`];
  for (const sup of s.supervisors) {
    lines.push(`  ${sup.id}  ${sup.state}  pid ${sup.pid}  up ${Math.round((Date.now() - sup.startedAt) / 1000)}s`);
    for (const t of sup.types)
      lines.push(
        `    ${t.jobType.padEnd(20)} ${t.isolation.padEnd(4)} active ${t.active}/${t.concurrency}  sandboxes warm ${t.warm} busy ${t.busy} starting ${t.starting}  layers ${(t.layers ?? []).join('+') || '(none started)'}`,
      );
  }
  lines.push('queues:');
  for (const [name, c] of Object.entries(s.queues)) {
    lines.push(
      `  ${name.padEnd(20)} waiting ${c.waiting ?? 0}  active ${c.active ?? 0}  delayed ${c.delayed ?? 0}  failed ${c.failed ?? 0}  completed ${c.completed ?? 0}`,
    );
  }
  return lines.join('\n');
}

/** Runs the CLI; resolves with the exit code. `start` resolves only after shutdown. */
export async function main(
  argv: string[],
  io: Io = { out: (s) => process.stdout.write(`${s}\n`), err: (s) => process.stderr.write(`${s}\n`) },
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string' },
        role: { type: 'string', default: 'all' },
        'metrics-port': { type: 'string' },
        json: { type: 'boolean', default: false },
        workers: { type: 'boolean', default: false },
        'idempotency-key': { type: 'string' },
        secrets: { type: 'boolean', default: false },
        now: { type: 'boolean', default: false },
        production: { type: 'boolean', default: process.env.NODE_ENV === 'production' },
        'metrics-url': { type: 'string', multiple: true },
        'prometheus-url': { type: 'string' },
        provider: { type: 'string' },
        since: { type: 'string' },
        secret: { type: 'string' },
        denied: { type: 'boolean', default: false },
        limit: { type: 'string' },
        file: { type: 'string' },
        'keep-old': { type: 'boolean', default: false },
        'drop-old': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    io.err(`${toError(err).message}\n\n${USAGE}`);
    return 2;
  }
  const { values: opts, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (opts.help || !command) {
    io.out(USAGE);
    return command || opts.help ? 0 : 2;
  }
  const print = (human: string, data: unknown): void => io.out(opts.json ? JSON.stringify(data) : human);

  try {
    const config = await loadConfig(opts.config ? { path: opts.config } : {});
    switch (command) {
      case 'start': {
        const role = opts.role;
        if (!isOneOf(ROLES, role)) throw new FleetError('INVALID_REQUEST', `--role must be one of ${ROLES.join(', ')}`);
        const logger = makeLogger();
        // Several supervisors on one host each need their own metrics port: flag > env > config.
        const portText = opts['metrics-port'] ?? process.env.FLEET_METRICS_PORT;
        const metricsPort = portText === undefined ? undefined : Number(portText);
        if (metricsPort !== undefined && !(Number.isInteger(metricsPort) && metricsPort >= 0 && metricsPort <= 65535)) {
          throw new FleetError(
            'CONFIG_INVALID',
            `--metrics-port / FLEET_METRICS_PORT must be a port number 0–65535 (0 picks a free one); got "${portText}"`,
          );
        }
        // Signal handlers go in before start-up, so a SIGTERM that arrives while it runs still drains.
        let fleet: Awaited<ReturnType<typeof startFleet>> | null = null;
        let signalled = false;
        let stop!: () => void;
        const stopped = new Promise<void>((resolve) => (stop = resolve));
        const onSignal = (sig: NodeJS.Signals): void => {
          if (signalled) {
            logger.warn(`second ${sig}: exiting now`);
            process.exit(130);
          }
          signalled = true;
          logger.info(`${sig} received: draining`);
          if (fleet) void fleet.release().then(stop);
        };
        process.on('SIGTERM', onSignal);
        process.on('SIGINT', onSignal);
        fleet = await startFleet({
          config,
          role,
          logger,
          ...(metricsPort !== undefined ? { metricsPort } : {}),
        });
        if (signalled) void fleet.release().then(stop);
        await stopped;
        return 0;
      }
      case 'enqueue': {
        const [type, json] = rest;
        if (!type || json === undefined) throw new FleetError('INVALID_REQUEST', 'usage: fleet enqueue <type> <json>');
        let data: unknown;
        try {
          data = JSON.parse(json);
        } catch (err) {
          throw new FleetError('INVALID_JSON', `payload is not valid JSON: ${toError(err).message}`);
        }
        const key = opts['idempotency-key'];
        const r = await withProducer(config, 'api', (p) => p.enqueue(type, data, key ? { idempotencyKey: key } : {}));
        print(r.id, r);
        return 0;
      }
      case 'job': {
        const [id] = rest;
        if (!id) throw new FleetError('INVALID_REQUEST', 'usage: fleet job <id>');
        const job = await withProducer(config, 'ops', (p) => p.getJob(id));
        print(JSON.stringify(job, null, 2), job);
        return 0;
      }
      case 'status': {
        const both = !opts.workers && !opts.secrets;
        const out: Record<string, unknown> = {};
        const human: string[] = [];
        if (opts.workers || both) {
          const s = await status(config);
          Object.assign(out, s);
          human.push(renderStatus(s));
        }
        if (opts.secrets || both) {
          const rows = await withRedis(config, 'ops', (r) => sec.secretsStatus(config, r));
          out.secrets = rows;
          human.push(`secrets:\n${sec.renderSecretsStatus(rows)}`);
        }
        print(human.join('\n'), out);
        return 0;
      }
      case 'secrets': {
        const [sub, name] = rest;
        const url = discoverRedisAccess(config)?.urlFor('scheduler');
        const redis = url ? connectRedis(url, 'producer', { lazyConnect: true, tls: config.redis.tls }) : undefined;
        redis?.on('error', () => undefined);
        try {
          if (sub === 'set' && name) {
            const value = await sec.readValueFromStdin(process.stdin, (m) => io.err(m));
            const r = await sec.secretsSet(config, redis, name, value, opts.provider);
            print(`${r.name}: stored version ${r.version} in ${r.provider}`, r);
          } else if (sub === 'list') {
            const rows = await sec.secretsList(config, redis);
            print(
              rows
                .map(
                  (m) =>
                    `${m.name.padEnd(24)} ${m.provider.padEnd(6)} v${m.version}  ${new Date(m.updatedAt).toISOString()}`,
                )
                .join('\n') || 'no secrets stored',
              rows,
            );
          } else if (sub === 'delete' && name) {
            await sec.secretsDelete(config, redis, name, opts.provider);
            print(`${name}: deleted`, { name, deleted: true });
          } else throw new FleetError('INVALID_REQUEST', 'usage: fleet secrets set <name> | list | delete <name>');
        } finally {
          redis?.disconnect();
        }
        return 0;
      }
      case 'audit': {
        const sub = rest[0];
        if (sub === 'verify') {
          const url = discoverRedisAccess(config)?.urlFor('ops');
          const redis =
            url && !opts.file ? connectRedis(url, 'producer', { lazyConnect: true, tls: config.redis.tls }) : undefined;
          redis?.on('error', () => undefined);
          try {
            if (redis) await ensureReady(redis);
            const r = await trail.auditVerify(config, redis, {
              ...(opts.since ? { since: opts.since } : {}),
              ...(opts.file ? { file: opts.file } : {}),
            });
            print(trail.renderVerify(r), {
              ok: r.ok,
              records: r.records,
              writers: r.writers,
              breaks: r.breaks,
              firstBreak: r.firstBreak,
              checkpoint: r.checkpoint,
            });
            return r.ok ? 0 : 1;
          } finally {
            redis?.disconnect();
          }
        }
        if (sub === 'export') {
          const n = await withRedis(config, 'ops', (r) =>
            trail.auditExport(config, r, opts.since ? { since: opts.since } : {}, (line) => io.out(line)),
          );
          io.err(`${n} records exported`);
          return 0;
        }
        if (sub === 'init-key') {
          const url = discoverRedisAccess(config)?.urlFor('scheduler');
          const redis = url ? connectRedis(url, 'producer', { lazyConnect: true, tls: config.redis.tls }) : undefined;
          redis?.on('error', () => undefined);
          try {
            const r = await trail.auditInitKey(config, redis);
            print(`audit MAC key ${r.secret}: version ${r.version} in ${r.provider}`, r);
          } finally {
            redis?.disconnect();
          }
          return 0;
        }
        if (sub)
          throw new FleetError(
            'INVALID_REQUEST',
            `unknown audit subcommand "${sub}". Use: fleet audit [verify | export | init-key]`,
          );
        const rows = await withRedis(config, 'ops', (r) =>
          sec.audit(config, r, {
            ...(opts.since ? { since: opts.since } : {}),
            ...(opts.secret ? { secret: opts.secret } : {}),
            denied: opts.denied,
            ...(opts.limit ? { limit: Number(opts.limit) } : {}),
          }),
        );
        print(sec.renderAudit(rows), rows);
        return 0;
      }
      case 'rotate': {
        const [secret] = rest;
        if (!secret) throw new FleetError('INVALID_REQUEST', 'usage: fleet rotate <secret> [--now]');
        const out: { secret: string; jobId: string | undefined; state: string; version?: string; error?: string } =
          await withRedis(config, 'scheduler', async (r) => {
            const queue = rotationQueue(config, r);
            try {
              const job = await requestRotation(config, queue, secret);
              if (!opts.now) return { secret, jobId: job.id, state: 'queued' };
              for (;;) {
                const state = await job.getState();
                const fresh = job.id === undefined ? undefined : await queue.getJob(job.id);
                if (!fresh) throw new FleetError('INTERNAL', `rotation job ${job.id} of ${secret} vanished from Redis`);
                if (state === 'completed' || (state === 'failed' && fresh.finishedOn)) {
                  return {
                    secret,
                    jobId: job.id,
                    state,
                    ...(state === 'completed'
                      ? { version: String(fieldOf(fresh.returnvalue, 'version')) }
                      : { error: fresh.failedReason }),
                  };
                }
                await new Promise((res) => setTimeout(res, 100));
              }
            } finally {
              await queue.close();
            }
          });
        print(
          out.state === 'completed'
            ? `${secret}: rotated to version ${out.version}`
            : out.state === 'queued'
              ? `${secret}: rotation queued (${out.jobId}); a scheduler role runs it`
              : `${secret}: rotation failed: ${out.error}`,
          out,
        );
        return out.state === 'failed' ? 1 : 0;
      }
      case 'kms': {
        const action = rest[0];
        if (action !== 'rotate-key' && action !== 'ensure-key')
          throw new FleetError('INVALID_REQUEST', 'usage: fleet kms rotate-key | fleet kms ensure-key');
        if (!config.secrets.kms)
          throw new FleetError(
            'CONFIG_INVALID',
            'secrets.kms is not configured. Fix: add secrets.kms { keyId, region } to the config.',
          );
        const keyId = config.secrets.kms.keyId;
        const out = await withRedis(config, 'scheduler', async (r) => {
          const { makeProvider, providerOfKind } = await import('../secrets/providers.js');
          const kms = providerOfKind(
            await makeProvider('kms', config, { redis: r, logger: makeLogger({ level: 'silent' }) }),
            'kms',
          );
          try {
            if (action === 'ensure-key') return await kms.ensureKey();
            await kms.rotateKeyNow();
            return null;
          } finally {
            await kms.close();
          }
        });
        if (out)
          print(out.created ? `KMS key ${keyId}: created (${out.keyId})` : `KMS key ${keyId}: exists (${out.keyId})`, {
            keyId,
            kmsKeyId: out.keyId,
            created: out.created,
          });
        else
          print(`KMS key ${keyId}: rotated on demand (existing data keys stay decryptable)`, { keyId, rotated: true });
        return 0;
      }
      case 'doctor': {
        const checks = await withRedis(config, 'ops', (r) =>
          doctor(config, r, {
            access: discoverRedisAccess(config),
            production: opts.production,
            metricsUrls: opts['metrics-url'] ?? [],
            ...(opts['prometheus-url'] ? { prometheusUrl: opts['prometheus-url'] } : {}),
          }),
        );
        const failed = checks.filter((c) => c.status === 'FAIL').length;
        const warned = checks.filter((c) => c.status === 'WARN').length;
        print(
          `${renderChecks(checks)}\n\n${checks.length} checks: ${checks.length - failed - warned} pass, ${warned} warn, ${failed} fail`,
          { checks, failed, warned },
        );
        return failed ? 1 : 0;
      }
      case 'redis': {
        if (rest[0] === 'rules') {
          // The exact rules, for managed Redis or your own tooling (passwords are yours to add).
          print(
            REDIS_ROLES.map(
              (r) => `ACL SETUSER fleet-${r} on clearselectors ${roleRules(r, config.redis.prefix).join(' ')}`,
            ).join('\n'),
            Object.fromEntries(REDIS_ROLES.map((r) => [r, roleRules(r, config.redis.prefix)])),
          );
          return 0;
        }
        if (rest[0] !== 'setup')
          throw new FleetError(
            'INVALID_REQUEST',
            'usage: fleet redis setup [--role R]... [--keep-old | --drop-old] | fleet redis rules',
          );
        const adminUrl = discoverRedisAccess(config)?.adminUrl() ?? config.redis.url;
        if (!adminUrl)
          throw new FleetError(
            'REDIS_UNAVAILABLE',
            'no Redis to set up. Fix: set REDIS_URL to the server, with an admin user in it (redis://admin:…@host:6379).',
          );
        const roles: RedisRole[] = [];
        for (const r of opts.role === 'all' ? REDIS_ROLES : (opts.role ?? '').split(',')) {
          if (!isOneOf(REDIS_ROLES, r))
            throw new FleetError('INVALID_REQUEST', `--role ${r}: not a Redis role. Roles: ${REDIS_ROLES.join(', ')}`);
          roles.push(r);
        }
        if (opts['keep-old'] && opts['drop-old'])
          throw new FleetError(
            'INVALID_REQUEST',
            '--keep-old and --drop-old exclude each other: the first adds a new password, the second then removes the old ones.',
          );
        // --drop-old keeps the passwords the roles have now (from the environment) and removes every other one.
        const passwords = opts['drop-old'] ? roleCredentialsFromEnv() : undefined;
        if (opts['drop-old'])
          for (const r of roles)
            if (!passwords?.[r])
              throw new FleetError(
                'INVALID_REQUEST',
                `--drop-old keeps the password in ${rolePasswordEnv(r)} and removes the others; it is not set. Fix: export the new password first.`,
              );
        const r = await trail.redisSetup(config, adminUrl, {
          roles,
          keepOld: opts['keep-old'],
          dropOld: opts['drop-old'],
          ...(passwords ? { passwords } : {}),
        });
        io.err(
          'Store each password like any credential: give each role only its own, as FLEET_REDIS_<ROLE>_PASSWORD or _FILE.',
        );
        print(trail.renderRedisSetup(r), { nodes: r.nodes, saved: r.saved, credentials: r.credentials });
        return 0;
      }
      case 'vault': {
        if (rest[0] !== 'setup') throw new FleetError('INVALID_REQUEST', 'usage: fleet vault setup');
        const r = await sec.vaultSetup(config);
        io.err('Store the secret_id like a password: give it to supervisors as VAULT_SECRET_ID, never in config.');
        print(
          `policies: ${r.policies.join(', ')}\n# supervisors (worker role)\nVAULT_ROLE_ID=${r.roleId}\nVAULT_SECRET_ID=${r.secretId}\n# rotation scheduler (scheduler role)\nVAULT_ROTATOR_ROLE_ID=${r.rotator.roleId}\nVAULT_ROTATOR_SECRET_ID=${r.rotator.secretId}`,
          r,
        );
        return 0;
      }
      default:
        io.err(`unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (err) {
    const e = toError(err);
    const code = err instanceof FleetError ? err.code : 'INTERNAL';
    if (opts.json)
      io.err(
        JSON.stringify({
          error: {
            code,
            message: e.message,
            ...(err instanceof FleetError && err.details ? { details: err.details } : {}),
          },
        }),
      );
    else
      io.err(
        `error [${code}]: ${e.message}${err instanceof FleetError && err.details ? `\n${JSON.stringify(err.details, null, 2)}` : ''}`,
      );
    return 1;
  }
}
