import path from 'node:path';
import { ensureReady, type RedisClient } from '../redis/connection.js';
import { auditKeyProvider, dataKeyProvider, encryptsData, type FleetConfig } from '../config/resolve.js';
import { execRef } from '../config/secret-rules.js';
import { ConfigError, toError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { ProviderKind, SecretMetadata, SecretProvider } from './provider.js';
import { DataKeyRing } from './data-key.js';
import { requireEnv } from '../config/credentials.js';
import { loadTlsFiles, VAULT_TLS } from '../config/tls.js';
import type { ConnectionOptions } from 'node:tls';
import type { VaultAuth, VaultProvider } from './vault-provider.js';
import type { DynamicSecret } from './vault-dynamic.js';
import type { KmsProvider } from './kms-provider.js';
import type { LocalProvider } from './local-provider.js';
import type { ExecProvider } from './exec-provider.js';
import type { ExecProgram } from './exec-program.js';
import type { SecretsManagerProvider } from './secrets-manager-provider.js';

interface ProviderByKind {
  local: LocalProvider;
  vault: VaultProvider;
  kms: KmsProvider;
  exec: ExecProvider;
  'secrets-manager': SecretsManagerProvider;
}

/** `provider` as its own class, checked by `kind` (each provider class sets it to its own kind). */
export function providerOfKind<K extends ProviderKind>(provider: SecretProvider, kind: K): ProviderByKind[K] {
  if (provider.kind !== kind) throw new Error(`expected the ${kind} secret provider, got the ${provider.kind} one`);
  // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- checked on the line above
  return provider as ProviderByKind[K];
}

/** Provider kinds the config actually uses: by some secret, for the audit MAC key, or for the data key. */
export function usedProviders(config: FleetConfig): Set<ProviderKind> {
  return new Set([
    ...config.secretProviders.values(),
    auditKeyProvider(config),
    ...(encryptsData(config) ? [dataKeyProvider(config)] : []),
  ]);
}

/** The secrets Vault mints per job (`secrets.items.*.dynamic`), by name. */
export function dynamicSecrets(config: FleetConfig): Map<string, DynamicSecret> {
  const out = new Map<string, DynamicSecret>();
  for (const [name, item] of Object.entries(config.secrets.items)) if (item.dynamic) out.set(name, item.dynamic);
  return out;
}

export function vaultAuthFromEnv(
  v: NonNullable<FleetConfig['secrets']['vault']>,
  preferToken = false,
  identity: 'supervisor' | 'rotator' = 'supervisor',
): VaultAuth {
  if (v.auth === 'token' || (preferToken && (process.env[v.tokenEnv] || process.env[`${v.tokenEnv}_FILE`])))
    return { method: 'token', token: requireEnv(v.tokenEnv, 'secrets.vault (auth "token")') };
  if (identity === 'rotator') {
    return {
      method: 'approle',
      roleId: requireEnv(v.rotatorRoleIdEnv, 'the rotation scheduler (AppRole fleet-rotator)'),
      secretId: requireEnv(v.rotatorSecretIdEnv, 'the rotation scheduler (AppRole fleet-rotator)'),
      mount: v.approleMount,
    };
  }
  return {
    method: 'approle',
    roleId: requireEnv(v.roleIdEnv, 'secrets.vault (AppRole)'),
    secretId: requireEnv(v.secretIdEnv, 'secrets.vault (AppRole)'),
    mount: v.approleMount,
  };
}

/** Where Vault is (the config's address, else VAULT_ADDR) and, for https, its TLS files loaded. */
export function vaultEndpoint(v: NonNullable<FleetConfig['secrets']['vault']>): {
  address: string;
  tls: ConnectionOptions;
} {
  const address = v.address ?? process.env.VAULT_ADDR ?? '';
  return { address, tls: address.startsWith('https://') ? loadTlsFiles(v.tls, VAULT_TLS) : {} };
}

/**
 * Builds one provider. Backend SDKs are imported here, on demand, so a fleet that uses only the
 * local store never loads node-vault or the AWS SDK.
 */
export async function makeProvider(
  kind: ProviderKind,
  config: FleetConfig,
  deps: { redis?: RedisClient; logger: Logger; preferVaultToken?: boolean; vaultIdentity?: 'supervisor' | 'rotator' },
): Promise<SecretProvider> {
  const s = config.secrets;
  if (kind === 'local') {
    const { LocalProvider } = await import('./local-provider.js');
    return new LocalProvider({
      file: path.resolve(config.dataDir, s.local.file),
      keyFile: path.resolve(config.dataDir, s.local.keyFile),
      masterKeyEnv: s.local.masterKeyEnv,
      keepVersions: s.local.keepVersions,
    });
  }
  if (kind === 'vault') {
    if (!s.vault) throw new ConfigError('secrets.vault is not configured');
    const { VaultProvider } = await import('./vault-provider.js');
    const { address, tls } = vaultEndpoint(s.vault);
    return new VaultProvider({
      address,
      tls,
      mount: s.vault.mount,
      prefix: s.vault.prefix,
      auth: vaultAuthFromEnv(s.vault, deps.preferVaultToken, deps.vaultIdentity),
      tokenRole: s.vault.tokenRole,
      policyPrefix: s.vault.policyPrefix,
      tokenTtlMarginMs: s.vault.tokenTtlMarginMs,
      readsPerSecret: s.vault.readsPerSecret,
      spareTokens: s.vault.spareTokens,
      dynamic: dynamicSecrets(config),
      requestTimeoutMs: s.vault.requestTimeoutMs,
      logger: deps.logger,
    });
  }
  if (kind === 'exec') {
    const { ExecProvider } = await import('./exec-provider.js');
    const programs = new Map<string, ExecProgram>(
      Object.entries(s.exec ?? {}).map(([name, p]) => [name, { name, ...p }]),
    );
    const secrets = new Map<string, { program: string; id: string }>();
    for (const [name, k] of config.secretProviders) {
      if (k !== 'exec') continue;
      const ref = execRef(s, name);
      if ('problem' in ref) throw new ConfigError(ref.problem);
      secrets.set(name, ref);
    }
    return new ExecProvider({ programs, secrets });
  }
  if (kind === 'secrets-manager') {
    const sm = s.secretsManager;
    const { SecretsManagerProvider } = await import('./secrets-manager-provider.js');
    return new SecretsManagerProvider({
      region: sm.region ?? process.env.AWS_REGION ?? 'us-east-1',
      ...(sm.endpoint ? { endpoint: sm.endpoint } : {}),
      namePrefix: sm.namePrefix,
      ...(sm.kmsKeyId ? { kmsKeyId: sm.kmsKeyId } : {}),
      recoveryWindowDays: sm.recoveryWindowDays,
      requestTimeoutMs: sm.requestTimeoutMs,
    });
  }
  if (!s.kms) throw new ConfigError('secrets.kms is not configured');
  if (!deps.redis)
    throw new ConfigError('the kms provider keeps its ciphertexts in Redis. Fix: set REDIS_URL (or run `npm start`).');
  // Its ciphertexts are read and written through this connection: it must be up before the
  // first command (a fail-fast connection refuses commands while it is still connecting).
  await ensureReady(deps.redis, 10_000);
  const { KmsProvider } = await import('./kms-provider.js');
  return new KmsProvider({
    keyId: s.kms.keyId,
    region: s.kms.region ?? process.env.AWS_REGION ?? 'us-east-1',
    ...(s.kms.endpoint ? { endpoint: s.kms.endpoint } : {}),
    redis: deps.redis,
    keyPrefix: config.redis.prefix,
    keepVersions: s.kms.keepVersions,
    requestTimeoutMs: s.kms.requestTimeoutMs,
  });
}

export async function makeProviders(
  config: FleetConfig,
  deps: Parameters<typeof makeProvider>[2],
  kinds = usedProviders(config),
): Promise<Map<ProviderKind, SecretProvider>> {
  const out = new Map<ProviderKind, SecretProvider>();
  for (const k of kinds) out.set(k, await makeProvider(k, config, deps));
  return out;
}

/** Closes providers a caller opened with makeProviders; one that fails to close does not stop the others. */
export async function closeProviders(providers: ReadonlyMap<ProviderKind, SecretProvider>): Promise<void> {
  await Promise.allSettled([...providers.values()].map((p) => p.close()));
}

/**
 * The stored metadata of every secret over the given providers (`fleet status --secrets`,
 * `fleet secrets list`, the scheduler's secret health). A provider that cannot be opened or listed
 * is reported in `problems`, not fatal. `open` says whether the caller's provider is to be closed
 * afterwards (one made for this listing) or kept (a long-lived one).
 */
export async function listSecrets(
  kinds: Iterable<ProviderKind>,
  open: (kind: ProviderKind) => Promise<{ provider: SecretProvider; close: boolean }>,
): Promise<{ meta: Map<string, SecretMetadata & { provider: ProviderKind }>; problems: Map<ProviderKind, string> }> {
  const meta = new Map<string, SecretMetadata & { provider: ProviderKind }>();
  const problems = new Map<ProviderKind, string>();
  for (const kind of new Set(kinds)) {
    try {
      const { provider, close } = await open(kind);
      try {
        for (const m of await provider.list()) meta.set(m.name, { ...m, provider: kind });
      } finally {
        if (close) await provider.close();
      }
    } catch (err) {
      problems.set(kind, toError(err).message);
    }
  }
  return { meta, problems };
}

/** The data key ring of job data at rest (`secrets.dataKey`), read through `provider` (the data key's store, opened with the caller's identity). */
export function dataKeyRing(config: FleetConfig, provider: SecretProvider): DataKeyRing {
  const { name, refreshSeconds } = config.secrets.dataKey;
  return new DataKeyRing({ provider, name, refreshMs: refreshSeconds * 1000, create: true });
}
