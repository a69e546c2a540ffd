import { z } from 'zod';
import { SANDBOX_LAYERS } from './sandbox-boundary.js';
import type { RedisClient } from '../redis/connection.js';
import { supervisorsKey } from '../redis/keys.js';

/** A supervisor's heartbeat as stored in Redis, checked when read back rather than trusted. */
export const supervisorStatusSchema = z.object({
  id: z.string(),
  host: z.string(),
  pid: z.number().int(),
  state: z.enum(['starting', 'running', 'draining', 'stopped', 'failed']),
  startedAt: z.number(),
  updatedAt: z.number(),
  types: z.array(
    z.object({
      jobType: z.string(),
      isolation: z.enum(['job', 'pool']),
      layers: z.array(z.enum(SANDBOX_LAYERS)).readonly(),
      warm: z.number().int(),
      busy: z.number().int(),
      starting: z.number().int(),
      concurrency: z.number().int(),
      active: z.number().int(),
    }),
  ),
});
export type SupervisorStatus = z.infer<typeof supervisorStatusSchema>;

/**
 * The supervisors that reported within three heartbeats (a SIGKILLed one leaves its last record
 * behind), and the ids of records that are not valid heartbeats (written by something else).
 */
export async function readSupervisorStatuses(
  redis: RedisClient,
  prefix: string,
  heartbeatMs: number,
  now = Date.now(),
): Promise<{ live: SupervisorStatus[]; invalid: string[] }> {
  const raw = await redis.hgetall(supervisorsKey(prefix));
  const staleAfter = now - heartbeatMs * 3;
  const live: SupervisorStatus[] = [];
  const invalid: string[] = [];
  for (const [id, text] of Object.entries(raw)) {
    let parsed: ReturnType<typeof supervisorStatusSchema.safeParse>;
    try {
      parsed = supervisorStatusSchema.safeParse(JSON.parse(text));
    } catch {
      invalid.push(id);
      continue;
    }
    if (!parsed.success) invalid.push(id);
    else if (parsed.data.updatedAt >= staleAfter) live.push(parsed.data);
  }
  return { live, invalid };
}

/** The job states `fleet status` and the queue-depth gauges count, in one place. */
export const COUNTED_STATES = ['waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed'] as const;

/** Jobs in one queue per counted state (one Lua call). */
export function queueDepths(queue: {
  getJobCounts(...types: string[]): Promise<Record<string, number>>;
}): Promise<Record<string, number>> {
  return queue.getJobCounts(...COUNTED_STATES);
}
