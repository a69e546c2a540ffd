import type { RedisClient } from '../redis/connection.js';
import type { FleetConfig } from '../config/resolve.js';
import { scheduleOf } from '../config/schedule.js';
import { readAudit } from '../secrets/audit.js';
import type { ProviderKind, SecretMetadata } from '../secrets/provider.js';
import { readRotationState, type RotationState } from './state.js';

/** The longest a secret of each kind may live (the zero-trust rules: API keys weekly, encryption keys daily). */
export const MAX_AGE_MS = { 'api-key': 7 * 86_400_000, 'encryption-key': 86_400_000, other: 7 * 86_400_000 } as const;

export interface SecretHealth {
  secret: string;
  provider: ProviderKind;
  kind: keyof typeof MAX_AGE_MS;
  version: string | null;
  ageSeconds: number | null;
  allowedAgeSeconds: number;
  hasPolicy: boolean;
  rotation: RotationState;
  nextDueAt: number | null;
  overdue: boolean;
  deniedLast24h: number;
  /**
   * 0 for a fresh, healthy secret, rising linearly to 1 at its allowed age; at least 1 when action
   * is needed: rotation overdue or last rotation failed, no rotation policy, or denied accesses
   * in the last 24 h. Formula: max(age / allowedAge, overdue, lastFailed, noPolicy, denied24h > 0).
   */
  exposureRisk: number;
}

export async function secretHealth(
  config: FleetConfig,
  redis: RedisClient,
  meta: ReadonlyMap<string, SecretMetadata>,
  now = Date.now(),
): Promise<SecretHealth[]> {
  const names = [...config.secretProviders].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const denied = await readAudit(redis, config.redis.prefix, {
    sinceMs: now - 86_400_000,
    deniedOnly: true,
    limit: 10_000,
  });
  return Promise.all(
    names.map(async ([secret, provider]) => {
      const item = config.secrets.items[secret];
      const kind = item?.kind ?? 'api-key';
      const policy = item?.rotation;
      const intervalMs = policy ? scheduleOf(policy.schedule).intervalMs : null;
      const allowedMs = Math.min(intervalMs ?? MAX_AGE_MS[kind], MAX_AGE_MS[kind]);
      const rotation = await readRotationState(redis, config.redis.prefix, secret);
      const m = meta.get(secret);
      // A dynamic credential is minted for each job and destroyed at its end: it has no age to
      // grow old and needs no rotation policy.
      const dynamic = Boolean(item?.dynamic);
      const since = dynamic ? null : (rotation.lastSuccessAt ?? m?.updatedAt ?? null);
      const ageMs = since ? Math.max(0, now - since) : null;
      const nextDueAt = since && intervalMs ? since + intervalMs : null;
      // A rotation runs when due; give it a little slack before calling it overdue.
      const overdue =
        nextDueAt !== null && intervalMs !== null && now > nextDueAt + Math.min(intervalMs * 0.1, 3_600_000);
      const deniedLast24h = denied.filter((d) => d.secret === secret).length;
      const signals = [
        ageMs === null ? 0 : ageMs / allowedMs,
        overdue ? 1 : 0,
        rotation.lastOutcome === 'failed' ? 1 : 0,
        policy || dynamic ? 0 : 1,
        deniedLast24h > 0 ? 1 : 0,
      ];
      return {
        secret,
        provider,
        kind,
        version: m?.version ?? rotation.currentVersion,
        ageSeconds: ageMs === null ? null : Math.round(ageMs / 1000),
        allowedAgeSeconds: allowedMs / 1000,
        hasPolicy: Boolean(policy) || dynamic,
        rotation,
        nextDueAt,
        overdue,
        deniedLast24h,
        exposureRisk: Math.round(Math.max(...signals) * 1000) / 1000,
      };
    }),
  );
}
