import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { FleetConfig } from '../config/resolve.js';
import { redisUrlNodes } from '../config/redis-url.js';

/**
 * The addresses of the fleet's own services (Redis, Vault, the KMS and Secrets Manager endpoints): every egress proxy
 * refuses them unless a type lists them by address. Names that do not resolve are skipped (they
 * are unreachable anyway).
 */
export async function fleetServiceAddresses(config: FleetConfig, redisUrl: string): Promise<string[]> {
  const hosts = new Set<string>(redisUrlNodes(redisUrl).map((n) => n.host));
  const vault = config.secrets.vault?.address ?? (config.secrets.vault ? process.env.VAULT_ADDR : undefined);
  for (const u of [vault, config.secrets.kms?.endpoint, config.secrets.secretsManager.endpoint]) {
    if (!u) continue;
    try {
      hosts.add(new URL(u).hostname.replace(/^\[|\]$/g, ''));
    } catch {
      /* validated elsewhere */
    }
  }
  const out = new Set<string>();
  await Promise.all(
    [...hosts].filter(Boolean).map(async (h) => {
      if (isIP(h)) out.add(h);
      else for (const a of await lookup(h, { all: true }).catch(() => [])) out.add(a.address);
    }),
  );
  return [...out];
}
