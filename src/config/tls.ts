/**
 * TLS material of the fleet's connections: the PEM files of a client (toward Redis, Vault) or of a
 * server (the API), where each setting comes from, how the files are read and checked, and what to
 * tell the operator when a handshake fails.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { ConfigError, errnoCode, errorMessage, type TlsFailure } from '../errors.js';

/** PEM files (absolute paths once resolved) and the name to verify. */
export interface TlsFiles {
  /** CA certificates trusted instead of Node's bundled roots. */
  caFile?: string;
  /** Client (or server) certificate. */
  certFile?: string;
  /** Its unencrypted private key. */
  keyFile?: string;
  /** Name the peer's certificate must carry, when it is not the host connected to. */
  servername?: string;
}

/** Where the settings of one connection come from: the config key and each environment variable. */
export interface TlsSettingNames {
  config: string;
  env: Partial<Record<keyof TlsFiles, string>>;
  /** What is connected to, for messages ("Redis", "Vault", "the API"). */
  peer: string;
}

export const REDIS_TLS: TlsSettingNames = {
  config: 'redis.tls',
  env: {
    caFile: 'REDIS_TLS_CA_FILE',
    certFile: 'REDIS_TLS_CERT_FILE',
    keyFile: 'REDIS_TLS_KEY_FILE',
    servername: 'REDIS_TLS_SERVERNAME',
  },
  peer: 'Redis',
};

/** The Vault CLI's own variables, so an operator's existing environment works unchanged. */
export const VAULT_TLS: TlsSettingNames = {
  config: 'secrets.vault.tls',
  env: {
    caFile: 'VAULT_CACERT',
    certFile: 'VAULT_CLIENT_CERT',
    keyFile: 'VAULT_CLIENT_KEY',
    servername: 'VAULT_TLS_SERVER_NAME',
  },
  peer: 'Vault',
};

export const API_TLS: TlsSettingNames = {
  config: 'api.tls',
  env: { certFile: 'FLEET_API_TLS_CERT_FILE', keyFile: 'FLEET_API_TLS_KEY_FILE' },
  peer: 'the API',
};

const FILE_KEYS = ['caFile', 'certFile', 'keyFile'] as const;

/** `rediss://` and `rediss-cluster://` speak TLS. */
export function isRedisTlsUrl(url: string): boolean {
  return /^rediss(-cluster)?:\/\//.test(url);
}

/**
 * NODE_TLS_REJECT_UNAUTHORIZED=0 turns certificate verification off for every TLS connection in the
 * process that does not set `rejectUnauthorized` itself. The fleet's own connections all set it
 * (Redis, Vault, KMS and Secrets Manager, the HTTP client, the egress proxy's upstreams), but the
 * setting says someone meant to trust any certificate, and any library call without an explicit
 * agent would. Null when verification is on.
 */
export function tlsVerificationOff(env: NodeJS.ProcessEnv = process.env): { reason: string; fix: string } | null {
  if (env.NODE_TLS_REJECT_UNAUTHORIZED !== '0') return null;
  return {
    reason:
      "NODE_TLS_REJECT_UNAUTHORIZED=0 turns off certificate verification for every TLS connection that does not turn it on itself (the fleet's own connections do)",
    fix: "unset NODE_TLS_REJECT_UNAUTHORIZED; trust a private CA with its file instead (REDIS_TLS_CA_FILE, VAULT_CACERT, createHttpClient's ca, NODE_EXTRA_CA_CERTS)",
  };
}

/** `redis.tls.caFile (REDIS_TLS_CA_FILE)`. */
export function settingName(names: TlsSettingNames, key: keyof TlsFiles): string {
  const env = names.env[key];
  return `${names.config}.${key}${env ? ` (${env})` : ''}`;
}

/**
 * Each setting from the config (paths relative to the config file), else from its environment
 * variable (paths relative to the working directory), else unset.
 */
export function resolveTlsFiles(
  given: TlsFiles | undefined,
  names: TlsSettingNames,
  baseDir: string,
  env: NodeJS.ProcessEnv = process.env,
): TlsFiles {
  const out: TlsFiles = {};
  const fromEnv = (key: keyof TlsFiles): string | undefined => {
    const name = names.env[key];
    return name ? env[name] || undefined : undefined;
  };
  for (const key of FILE_KEYS) {
    const own = given?.[key];
    const v = own ? path.resolve(baseDir, own) : fromEnv(key);
    if (v) out[key] = path.resolve(v);
  }
  const servername = given?.servername ?? fromEnv('servername');
  if (servername) out.servername = servername;
  return out;
}

export function hasTlsFiles(files: TlsFiles): boolean {
  return Object.values(files).some(Boolean);
}

/** A certificate without its key (or the reverse): start-up refuses it. */
export function tlsFileProblems(files: TlsFiles, names: TlsSettingNames): string[] {
  if (Boolean(files.certFile) === Boolean(files.keyFile)) return [];
  const [has, lacks] = files.certFile ? (['certFile', 'keyFile'] as const) : (['keyFile', 'certFile'] as const);
  return [
    `${settingName(names, has)} is set but ${settingName(names, lacks)} is not. Fix: give the certificate and its private key together.`,
  ];
}

function readPem(files: TlsFiles, key: (typeof FILE_KEYS)[number], names: TlsSettingNames): Buffer | undefined {
  const file = files[key];
  if (!file) return undefined;
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ConfigError(
      `${settingName(names, key)} names ${file}, which cannot be read (${errnoCode(err) ?? errorMessage(err)}). Fix: point it at a readable PEM file.`,
      { cause: err },
    );
  }
}

/**
 * Reads the files into Node TLS options with verification always on. Each file is checked here, so
 * a wrong one is named at start-up rather than surfacing later as a failed handshake.
 */
export function loadTlsFiles(files: TlsFiles, names: TlsSettingNames): tls.ConnectionOptions {
  for (const p of tlsFileProblems(files, names)) throw new ConfigError(p);
  const ca = readPem(files, 'caFile', names);
  const cert = readPem(files, 'certFile', names);
  const key = readPem(files, 'keyFile', names);
  if (ca) {
    try {
      // A CA file without a certificate would load as an empty trust list and fail every handshake.
      new X509Certificate(ca);
    } catch (err) {
      throw new ConfigError(
        `${settingName(names, 'caFile')}: ${files.caFile} holds no PEM certificate (${errorMessage(err)}). Fix: give the PEM file of the CA that signed ${names.peer}'s certificate.`,
        { cause: err },
      );
    }
  }
  if (cert && key) {
    try {
      tls.createSecureContext({ cert, key });
    } catch (err) {
      throw new ConfigError(
        `${settingName(names, 'certFile')} and ${settingName(names, 'keyFile')} do not load as a certificate and its key (${errorMessage(err)}). Fix: a PEM certificate and the unencrypted PEM private key that belongs to it.`,
        { cause: err },
      );
    }
  }
  return {
    rejectUnauthorized: true,
    ...(ca ? { ca } : {}),
    ...(cert ? { cert } : {}),
    ...(key ? { key } : {}),
    ...(files.servername ? { servername: files.servername } : {}),
  };
}

/** What to do about a failed handshake, in terms of the settings of this connection. */
export function tlsFix(failure: TlsFailure, names: TlsSettingNames): string {
  switch (failure.kind) {
    case 'untrusted':
      return `set ${settingName(names, 'caFile')} to the PEM file of the CA that signed ${names.peer}'s certificate`;
    case 'name':
      return `connect by a name ${names.peer}'s certificate carries (its subjectAltName), or set ${settingName(names, 'servername')} to one of them`;
    case 'expired':
      return `renew ${names.peer}'s certificate`;
    case 'client-certificate':
      return `${names.peer} requires a client certificate: set ${settingName(names, 'certFile')} and ${settingName(names, 'keyFile')}`;
    case 'client-certificate-refused':
      return `${names.peer} does not accept the client certificate: give one signed by a CA it trusts`;
    case 'not-tls':
      return `${names.peer} does not speak TLS on this port: use its TLS port`;
    case 'other':
      return `check ${names.peer}'s TLS settings and ${names.config}`;
  }
}
