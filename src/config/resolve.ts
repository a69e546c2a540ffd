import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { resolveJobType, type JobType } from './job-types.js';
import { redisUrlProblem } from './redis-url.js';
import { resolveSecrets } from './secret-rules.js';
import {
  API_TLS,
  hasTlsFiles,
  isRedisTlsUrl,
  REDIS_TLS,
  resolveTlsFiles,
  settingName,
  tlsFileProblems,
  VAULT_TLS,
} from './tls.js';
import type { TlsFiles, TlsSettingNames } from './tls.js';
import { FLEET_PRODUCER_NAMES, fleetConfigSchema, type FleetConfigInput, type ProviderKind } from './schema.js';

/** Re-exported: the fleet's modules take the job type from here, beside {@link FleetConfig}. */
export type { JobType } from './job-types.js';

type ParsedConfig = z.output<typeof fleetConfigSchema>;

type ParsedVault = NonNullable<ParsedConfig['secrets']['vault']>;

export interface FleetConfig extends Omit<ParsedConfig, 'jobTypes' | 'redis' | 'api' | 'secrets'> {
  /** `tls`: files as absolute paths, each from the config or else its environment variable. */
  redis: Omit<ParsedConfig['redis'], 'tls'> & { tls: TlsFiles };
  api: Omit<ParsedConfig['api'], 'tls'> & { tls: Pick<TlsFiles, 'certFile' | 'keyFile'> };
  secrets: Omit<ParsedConfig['secrets'], 'vault'> & { vault?: Omit<ParsedVault, 'tls'> & { tls: TlsFiles } };
  /** Which provider serves each secret named anywhere in the config. */
  secretProviders: ReadonlyMap<string, ProviderKind>;
  /** Absolute path of the file this came from, or `null` when built in code. */
  source: string | null;
  dataDir: string;
  jobTypes: ReadonlyMap<string, JobType>;
}

/** Identity helper giving config files type checking and editor help. */
export function defineConfig(config: FleetConfigInput): FleetConfigInput {
  return config;
}

function formatZodIssues(error: z.ZodError): string {
  return error.issues.map((i) => `  - ${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('\n');
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value) && !(value instanceof z.ZodType)) {
    Object.freeze(value);
    for (const v of value instanceof Map ? value.values() : Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * Validates and completes a configuration. Throws {@link ConfigError} naming each bad setting and
 * how to fix it; refuses contradictory or unsafe combinations (see the checks below, and those of
 * job-types.ts and secret-rules.ts).
 */
export function resolveConfig(input: unknown, options: { baseDir?: string; source?: string | null } = {}): FleetConfig {
  const parsed = fleetConfigSchema.safeParse(input);
  if (!parsed.success) {
    throw new ConfigError(
      `fleet config${options.source ? ` (${options.source})` : ''} is invalid:\n${formatZodIssues(parsed.error)}`,
    );
  }
  const cfg = parsed.data;
  const baseDir = options.baseDir ?? process.cwd();
  const problems: string[] = [];
  const jobTypes = new Map<string, JobType>();

  for (const jt0 of cfg.jobTypes) {
    const declaredBefore = jobTypes.has(jt0.name);
    jobTypes.set(jt0.name, resolveJobType(jt0, { items: cfg.secrets.items, baseDir, declaredBefore }, problems));
  }

  for (const p of cfg.producers) {
    for (const t of p.jobTypes) {
      if (t !== '*' && !jobTypes.has(t))
        problems.push(
          `producers.${p.name}.jobTypes names "${t}", which is not a declared job type. Fix: declare it or remove it.`,
        );
    }
  }
  const sec = cfg.secrets;
  const secretProviders = resolveSecrets(sec, jobTypes, baseDir, problems);

  // TLS: files that exist, a certificate with its key, and no TLS settings beside a plain URL
  // (the operator would believe the traffic encrypted).
  const redisUrl = cfg.redis.url ?? process.env.REDIS_URL;
  const redisUrlRefusal = redisUrl === undefined ? null : redisUrlProblem(redisUrl);
  if (redisUrlRefusal)
    problems.push(`redis.url (or REDIS_URL) ${redisUrlRefusal.reason}. Fix: ${redisUrlRefusal.fix}.`);
  const redisTls = resolveTlsFiles(cfg.redis.tls, REDIS_TLS, baseDir);
  problems.push(...tlsPathProblems(redisTls, REDIS_TLS));
  if (hasTlsFiles(redisTls) && !(redisUrl && isRedisTlsUrl(redisUrl)))
    problems.push(
      redisUrl
        ? `redis.tls (or REDIS_TLS_*) is set but the Redis URL is not rediss:// or rediss-cluster://: the connection would be plain TCP. Fix: use the rediss:// form of the URL, or remove the TLS settings.`
        : 'redis.tls (or REDIS_TLS_*) is set but no Redis URL is: the private redis-server `npm start` runs speaks plain TCP on loopback. Fix: set REDIS_URL to your rediss:// server, or remove the TLS settings.',
    );
  const vaultTls = sec.vault ? resolveTlsFiles(sec.vault.tls, VAULT_TLS, baseDir) : {};
  problems.push(...tlsPathProblems(vaultTls, VAULT_TLS));
  const vaultAddress = sec.vault?.address ?? process.env.VAULT_ADDR;
  if (hasTlsFiles(vaultTls) && vaultAddress && !vaultAddress.startsWith('https://'))
    problems.push(
      'secrets.vault.tls (or VAULT_CACERT / VAULT_CLIENT_CERT) is set but the Vault address is not https://: the connection would be plain HTTP. Fix: use the https:// address of Vault, or remove the TLS settings.',
    );
  const apiTls = resolveTlsFiles(cfg.api.tls, API_TLS, baseDir);
  problems.push(...tlsPathProblems(apiTls, API_TLS));

  problems.push(...producerProblems(cfg.producers));

  if (problems.length) {
    throw new ConfigError(
      `fleet config${options.source ? ` (${options.source})` : ''} is refused:\n${problems.map((p) => `  - ${p}`).join('\n')}`,
    );
  }

  const { jobTypes: _jt, ...top } = cfg;
  const { vault: _v, ...secretsWithoutVault } = cfg.secrets;
  const config: FleetConfig = {
    ...top,
    redis: { ...cfg.redis, url: redisUrl, tls: redisTls },
    api: { ...cfg.api, tls: apiTls },
    secrets: {
      ...secretsWithoutVault,
      ...(sec.vault ? { vault: { ...sec.vault, tls: vaultTls } } : {}),
      audit: {
        ...cfg.secrets.audit,
        ...(cfg.secrets.audit.export && cfg.secrets.audit.export !== '-'
          ? { export: path.resolve(baseDir, cfg.secrets.audit.export) }
          : {}),
      },
    },
    dataDir: path.resolve(baseDir, cfg.dataDir),
    source: options.source ?? null,
    secretProviders,
    jobTypes,
  };
  return deepFreeze(config);
}

/** A certificate without its key, and files that do not exist. */
function tlsPathProblems(files: TlsFiles, names: TlsSettingNames): string[] {
  const out = tlsFileProblems(files, names);
  for (const key of ['caFile', 'certFile', 'keyFile'] as const) {
    const file = files[key];
    if (file && !existsSync(file))
      out.push(`${settingName(names, key)}: ${file} does not exist. Fix: give the path of the PEM file.`);
  }
  return out;
}

/** Who owns a job is its producer's name: one per service, and none the fleet's own producers use. */
function producerProblems(producers: readonly ParsedConfig['producers'][number][]): string[] {
  const out: string[] = [];
  const reserved = new Map<string, string>(Object.entries(FLEET_PRODUCER_NAMES).map(([k, v]) => [v, k]));
  const names = new Set<string>();
  const hashes = new Set<string>();
  for (const p of producers) {
    if (reserved.has(p.name))
      out.push(
        `producers.${p.name}: "${p.name}" is the owner name the fleet's own producers record (reserved: ${[...reserved.keys()].join(', ')}); an HTTP producer with it would read the jobs they enqueue, sealed data in plaintext. Fix: give this producer another name.`,
      );
    if (names.has(p.name))
      out.push(
        `producers.${p.name}: two producers have this name, and a job's owner is its producer's name: each would read and cancel the other's jobs, sealed data in plaintext. Fix: one name per service; to rotate a token, list the old and new hashes in one producer's tokenSha256 (an array).`,
      );
    names.add(p.name);
    for (const hash of typeof p.tokenSha256 === 'string' ? [p.tokenSha256] : p.tokenSha256) {
      if (hashes.has(hash))
        out.push(`producers.${p.name}: the same token is given to two producers. Fix: one token per service.`);
      hashes.add(hash);
    }
  }
  return out;
}

/** The provider holding the audit trail's MAC key (`secrets.audit.macKey`): its own item's, else the default. */
export function auditKeyProvider(config: {
  secrets: Pick<FleetConfig['secrets'], 'items' | 'audit' | 'provider'>;
}): ProviderKind {
  return config.secrets.items[config.secrets.audit.macKey]?.provider ?? config.secrets.provider;
}

/** The provider holding the data key of job data at rest (`secrets.dataKey.name`): its own item's, else the default. */
export function dataKeyProvider(config: FleetConfig): ProviderKind {
  return config.secrets.items[config.secrets.dataKey.name]?.provider ?? config.secrets.provider;
}

/** Whether any job type seals its data at rest. */
export function encryptsData(config: FleetConfig): boolean {
  return [...config.jobTypes.values()].some((t) => t.encryptData);
}
