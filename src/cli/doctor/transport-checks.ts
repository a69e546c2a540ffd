/** `fleet doctor` on transport: TLS toward Redis, Vault and KMS, certificate verification, the API's listener. */
import type { FleetConfig } from '../../config/resolve.js';
import { isLoopbackHost } from '../../config/hosts.js';
import { redisUrlNodes, redisUrlProblem } from '../../config/redis-url.js';
import { isRedisTlsUrl, tlsVerificationOff } from '../../config/tls.js';
import { fail, pass, warn, type Check } from './check.js';

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
