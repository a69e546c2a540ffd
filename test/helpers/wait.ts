/**
 * Waits for what a test would otherwise sleep for: the next event of a kind on a FleetEventBus
 * (graphile-worker's cron tests wait the same way), a job's state, a supervisor's heartbeat, audit
 * records. Each wait fails with a message naming what it waited for, never falls through.
 */
import type { FleetEventBus, FleetEventName, FleetEvents } from '../../src/events.js';
import type { JobState, JobView } from '../../src/producers/job-view.js';
import type { Producer } from '../../src/producers/producer.js';
import { supervisorsKey } from '../../src/redis/keys.js';
import { readAudit, type AuditQuery, type AuditRecord } from '../../src/secrets/audit.js';
import type { RedisClient } from '../../src/redis/connection.js';
import { until } from './fleet.js';

/**
 * The next `event` on `events` for which `predicate` holds. Subscribe before the action that
 * causes it (`const next = awaitNext(…); act(); await next;`): an event emitted before the call
 * is not seen. Rejects after `timeoutMs`, naming the event.
 */
export function awaitNext<E extends FleetEventName>(
  events: FleetEventBus,
  event: E,
  predicate: (payload: FleetEvents[E]) => boolean = () => true,
  timeoutMs = 10_000,
): Promise<FleetEvents[E]> {
  return new Promise((resolve, reject) => {
    const off = events.on(event, (payload) => {
      if (!predicate(payload)) return;
      clearTimeout(timer);
      off();
      resolve(payload);
    });
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for a "${event}" event that matches`));
    }, timeoutMs);
  });
}

/** Waits until the job is in one of `states` (as the producer sees it) and returns it. */
export async function waitForJobState(
  p: Producer,
  id: string,
  states: JobState | JobState[],
  timeoutMs = 10_000,
): Promise<JobView> {
  const wanted = Array.isArray(states) ? states : [states];
  let job: JobView | undefined;
  await until(
    () => `job ${id} to be ${wanted.join(' or ')} (last seen: ${job?.state ?? 'not read yet'})`,
    async () => wanted.includes((job = await p.getJob(id)).state),
    timeoutMs,
  );
  return job!;
}

/** Waits until a BullMQ job (a rotation run, a queue's own job) is in one of `states`; returns the state. */
export async function waitForBullJob(
  job: { id?: string | undefined; getState(): Promise<string> },
  states: string | string[],
  timeoutMs = 15_000,
): Promise<string> {
  const wanted = Array.isArray(states) ? states : [states];
  let state = '';
  await until(
    () => `BullMQ job ${job.id ?? '(no id)'} to be ${wanted.join(' or ')} (last seen: ${state || 'not read yet'})`,
    async () => wanted.includes((state = await job.getState())),
    timeoutMs,
  );
  return state;
}

/** Waits for a supervisor's heartbeat record (the first one is written `heartbeatMs` after start). */
export async function waitForHeartbeat(redis: RedisClient, prefix: string, supervisorId: string): Promise<void> {
  await until(
    `a heartbeat of supervisor ${supervisorId} in ${supervisorsKey(prefix)}`,
    async () => (await redis.hexists(supervisorsKey(prefix), supervisorId)) === 1,
  );
}

/** Waits until the audit trail holds at least `count` records matching `query`, and returns them all. */
export async function waitForAudit(
  redis: RedisClient,
  prefix: string,
  query: AuditQuery,
  count: number,
  timeoutMs = 10_000,
): Promise<AuditRecord[]> {
  let records: AuditRecord[] = [];
  await until(
    `${count} audit record(s) matching ${JSON.stringify(query)}`,
    async () => (records = await readAudit(redis, prefix, query)).length >= count,
    timeoutMs,
  );
  return records;
}
