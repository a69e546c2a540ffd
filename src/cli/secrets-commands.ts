import type { RedisClient } from '../redis/connection.js';
import { auditKeyProvider, dataKeyProvider, encryptsData, type FleetConfig } from '../config/resolve.js';
import { FleetError } from '../errors.js';
import { silentLogger } from '../observability/logger.js';
import { readSecretStat } from '../secrets/audit.js';
import { PROVIDER_KINDS, type ProviderKind, type SecretMetadata } from '../secrets/provider.js';
import { isOneOf } from '../guards.js';
import { dynamicSecrets, listSecrets, makeProvider, usedProviders, vaultEndpoint } from '../secrets/providers.js';
import { requireEnv } from '../config/credentials.js';
import { secretHealth, type SecretHealth } from '../rotation/secret-health.js';
import { withOptionalRedis, type CommandContext } from './command.js';

function providerFor(config: FleetConfig, name: string, explicit?: string): ProviderKind {
  if (explicit) {
    if (!isOneOf(PROVIDER_KINDS, explicit))
      throw new FleetError('INVALID_REQUEST', `--provider must be one of ${PROVIDER_KINDS.join(', ')}`);
    return explicit;
  }
  return config.secretProviders.get(name) ?? config.secrets.provider;
}

/** Reads a secret value from stdin; the value never appears in argv or shell history. */
export async function readValueFromStdin(
  stdin: NodeJS.ReadableStream & { isTTY?: boolean } = process.stdin,
  prompt: (s: string) => void = () => undefined,
): Promise<Buffer> {
  if (stdin.isTTY) prompt('enter the value, then Ctrl-D:');
  const chunks: Buffer[] = [];
  for await (const c of stdin) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(String(c)));
  const all = Buffer.concat(chunks);
  chunks.forEach((c) => c.fill(0));
  // One trailing newline (from echo or a terminal) is not part of the value.
  const end = all.at(-1) === 0x0a ? (all.at(-2) === 0x0d ? all.length - 2 : all.length - 1) : all.length;
  const value = Buffer.alloc(end);
  all.copy(value, 0, 0, end);
  all.fill(0);
  if (!value.length)
    throw new FleetError('INVALID_REQUEST', 'no value on stdin. Fix: printf %s "$VALUE" | fleet secrets set <name>');
  return value;
}

export async function secretsSet(
  config: FleetConfig,
  redis: RedisClient | undefined,
  name: string,
  value: Buffer,
  explicit?: string,
): Promise<{ name: string; provider: ProviderKind; version: string }> {
  const kind = providerFor(config, name, explicit);
  const p = await makeProvider(kind, config, {
    ...(redis ? { redis } : {}),
    logger: silentLogger,
    preferVaultToken: true,
  });
  try {
    const { version } = await p.write(name, value);
    return { name, provider: kind, version };
  } finally {
    value.fill(0);
    await p.close();
  }
}

export async function secretsList(
  config: FleetConfig,
  redis: RedisClient | undefined,
): Promise<(SecretMetadata & { provider: ProviderKind })[]> {
  // Every provider in use, the default, and KMS when configured (`fleet secrets set --provider kms`
  // can store a value before any job type names it).
  const kinds = new Set<ProviderKind>([
    ...usedProviders(config),
    config.secrets.provider,
    ...(config.secrets.kms ? (['kms'] as const) : []),
  ]);
  const out: (SecretMetadata & { provider: ProviderKind })[] = [];
  for (const kind of kinds) {
    const p = await makeProvider(kind, config, {
      ...(redis ? { redis } : {}),
      logger: silentLogger,
      preferVaultToken: true,
    });
    try {
      for (const m of await p.list()) out.push({ ...m, provider: kind });
    } finally {
      await p.close();
    }
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

export async function secretsDelete(
  config: FleetConfig,
  redis: RedisClient | undefined,
  name: string,
  explicit?: string,
): Promise<void> {
  const p = await makeProvider(providerFor(config, name, explicit), config, {
    ...(redis ? { redis } : {}),
    logger: silentLogger,
    preferVaultToken: true,
  });
  try {
    await p.remove(name);
  } finally {
    await p.close();
  }
}

export interface SecretStatusRow extends Omit<SecretHealth, 'secret' | 'provider' | 'version'> {
  secret: string;
  provider: ProviderKind;
  version: string | null;
  updatedAt: number | null;
  lastAccessAt: number | null;
  granted: number;
  denied: number;
  errors: number;
  usedBy: string[];
  /** How each type that uses it gets it: `deliver` (the value in the sandbox) or `inject` (a placeholder; the value added at egress). */
  modes: Record<string, 'deliver' | 'inject'>;
  /** Where an injected value may go: hosts, header and format, body. */
  binding: { hosts: readonly string[]; header: string; format: string; body: boolean } | null;
  /** Why the version could not be read (provider down, no credentials), if so. */
  problem?: string;
}

/** `fleet status --secrets`: each secret the config names, with its provider, version and access counts. */
export async function secretsStatus(config: FleetConfig, redis: RedisClient): Promise<SecretStatusRow[]> {
  const { meta, problems } = await listSecrets(config.secretProviders.values(), async (kind) => ({
    provider: await makeProvider(kind, config, { redis, logger: silentLogger, preferVaultToken: true }),
    close: true,
  }));
  // One health row per secret the config names.
  const health = await secretHealth(config, redis, meta);
  return Promise.all(
    health.map(async (h): Promise<SecretStatusRow> => {
      const { secret, provider } = h;
      const m = meta.get(secret);
      const s = await readSecretStat(redis, config.redis.prefix, secret);
      const problem = problems.get(provider);
      return {
        ...h,
        version: m?.version ?? null,
        updatedAt: m?.updatedAt ?? null,
        lastAccessAt: s.lastAccessAt,
        granted: s.granted,
        denied: s.denied,
        errors: s.errors,
        usedBy: [...config.jobTypes.values()].filter((t) => t.secrets.includes(secret)).map((t) => t.name),
        modes: Object.fromEntries(
          [...config.jobTypes.values()].flatMap((t) => {
            const mode = t.secretModes.get(secret);
            return mode ? [[t.name, mode]] : [];
          }),
        ),
        binding: config.secrets.items[secret]?.binding ?? null,
        ...(problem ? { problem } : {}),
      };
    }),
  );
}

export function renderSecretsStatus(rows: SecretStatusRow[]): string {
  if (!rows.length) return 'no secrets declared';
  const when = (t: number | null): string => (t ? new Date(t).toISOString() : '-');
  const age = (s: number | null): string =>
    s === null
      ? '?'
      : s < 3600
        ? `${Math.round(s / 60)}m`
        : s < 172_800
          ? `${Math.round(s / 3600)}h`
          : `${Math.round(s / 86_400)}d`;
  return rows
    .map((r) => {
      const rot = r.hasPolicy
        ? `last rotation ${r.rotation.lastOutcome ?? 'never'} ${when(r.rotation.lastRotationAt)}  next due ${when(r.nextDueAt)}${r.overdue ? '  OVERDUE' : ''}`
        : 'no rotation policy';
      return `${r.secret.padEnd(24)} ${r.provider.padEnd(6)} v${r.version ?? '?'}  age ${age(r.ageSeconds)}  risk ${r.exposureRisk}  ${rot}\n    last access ${when(r.lastAccessAt)}  granted ${r.granted} denied ${r.denied} errors ${r.errors}  used by ${
        Object.entries(r.modes)
          .map(([t, m]) => `${t} (${m})`)
          .join(', ') || '-'
      }${r.binding ? `\n    binding: ${r.binding.hosts.join(', ')}  ${r.binding.header}: ${r.binding.format}${r.binding.body ? '  (+ body)' : ''}` : ''}${r.problem ? `\n    ! ${r.problem}` : ''}`;
    })
    .join('\n');
}

/** `fleet vault setup`: policies, token role and AppRole, with the admin token in VAULT_TOKEN. */
export async function vaultSetup(
  config: FleetConfig,
): Promise<Awaited<ReturnType<typeof import('../secrets/vault-setup.js').setupVault>>> {
  const v = config.secrets.vault;
  if (!v)
    throw new FleetError('CONFIG_INVALID', 'secrets.vault is not configured. Fix: add secrets.vault to the config.');
  const scopes = new Map<string, string[]>();
  for (const t of config.jobTypes.values())
    scopes.set(
      t.name,
      t.secrets.filter((n) => config.secretProviders.get(n) === 'vault'),
    );
  // node-vault loads here, not with every CLI command.
  const { setupVault } = await import('../secrets/vault-setup.js');
  return setupVault({
    ...vaultEndpoint(v),
    adminToken: requireEnv(v.tokenEnv, '`fleet vault setup` (an admin token)'),
    mount: v.mount,
    prefix: v.prefix,
    tokenRole: v.tokenRole,
    policyPrefix: v.policyPrefix,
    approleMount: v.approleMount,
    scopes,
    dynamic: new Map([...dynamicSecrets(config)].map(([name, d]) => [name, d.path])),
    rotated: Object.entries(config.secrets.items)
      .filter(([name, item]) => item.rotation && config.secretProviders.get(name) === 'vault')
      .map(([name]) => name),
    systemSecrets: [
      ...(auditKeyProvider(config) === 'vault' ? [config.secrets.audit.macKey] : []),
      ...(encryptsData(config) && dataKeyProvider(config) === 'vault' ? [config.secrets.dataKey.name] : []),
    ],
  });
}

/** `fleet secrets set <name> [--provider P] | list | delete <name>`: the value of `set` is read from stdin. */
export async function secretsCommand({ config, opts, args, io, print }: CommandContext): Promise<number> {
  const [sub, name] = args;
  await withOptionalRedis(config, 'scheduler', async (redis) => {
    if (sub === 'set' && name) {
      const value = await readValueFromStdin(process.stdin, (m) => io.err(m));
      const r = await secretsSet(config, redis, name, value, opts.provider);
      print(`${r.name}: stored version ${r.version} in ${r.provider}`, r);
    } else if (sub === 'list') {
      const rows = await secretsList(config, redis);
      print(
        rows
          .map(
            (m) => `${m.name.padEnd(24)} ${m.provider.padEnd(6)} v${m.version}  ${new Date(m.updatedAt).toISOString()}`,
          )
          .join('\n') || 'no secrets stored',
        rows,
      );
    } else if (sub === 'delete' && name) {
      await secretsDelete(config, redis, name, opts.provider);
      print(`${name}: deleted`, { name, deleted: true });
    } else throw new FleetError('INVALID_REQUEST', 'usage: fleet secrets set <name> | list | delete <name>');
  });
  return 0;
}

/** `fleet vault setup`: prints the AppRole credentials to hand to supervisors and the scheduler. */
export async function vaultCommand({ config, args, io, print }: CommandContext): Promise<number> {
  if (args[0] !== 'setup') throw new FleetError('INVALID_REQUEST', 'usage: fleet vault setup');
  const r = await vaultSetup(config);
  io.err('Store the secret_id like a password: give it to supervisors as VAULT_SECRET_ID, never in config.');
  print(
    `policies: ${r.policies.join(', ')}\n# supervisors (worker role)\nVAULT_ROLE_ID=${r.roleId}\nVAULT_SECRET_ID=${r.secretId}\n# rotation scheduler (scheduler role)\nVAULT_ROTATOR_ROLE_ID=${r.rotator.roleId}\nVAULT_ROTATOR_SECRET_ID=${r.rotator.secretId}`,
    r,
  );
  return 0;
}
