import type { RedisClient } from '../redis/connection.js';
import { isOneOf } from '../guards.js';
import { rotationStateKey } from '../redis/keys.js';

export const ROTATION_STEPS = ['create', 'set', 'test', 'promote', 'retire'] as const;
export type RotationStep = (typeof ROTATION_STEPS)[number];

/** What `fleet status --secrets` and the metrics show about one secret's rotation. */
export interface RotationState {
  secret: string;
  currentVersion: string | null;
  lastRotationAt: number | null;
  lastOutcome: 'ok' | 'failed' | null;
  lastFailedStep: RotationStep | null;
  lastError: string | null;
  lastSuccessAt: number | null;
  rotations: number;
  failures: number;
  /** Versions waiting for the end of their grace window: version → retire-at (ms). */
  retiring: Record<string, number>;
}

export async function readRotationState(redis: RedisClient, prefix: string, secret: string): Promise<RotationState> {
  const h = await redis.hgetall(rotationStateKey(prefix, secret));
  const retiring: Record<string, number> = {};
  for (const [k, v] of Object.entries(h)) if (k.startsWith('retire:')) retiring[k.slice(7)] = Number(v);
  return {
    secret,
    currentVersion: h.currentVersion ?? null,
    lastRotationAt: h.lastRotationAt ? Number(h.lastRotationAt) : null,
    lastOutcome: isOneOf(['ok', 'failed'], h.lastOutcome) ? h.lastOutcome : null,
    lastFailedStep: isOneOf(ROTATION_STEPS, h.lastFailedStep) ? h.lastFailedStep : null,
    lastError: h.lastError ?? null,
    lastSuccessAt: h.lastSuccessAt ? Number(h.lastSuccessAt) : null,
    rotations: Number(h.rotations ?? 0),
    failures: Number(h.failures ?? 0),
    retiring,
  };
}
