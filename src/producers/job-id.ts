import { createHash, randomUUID } from 'node:crypto';
import { JOB_TYPE_NAME } from '../config/schema.js';

/**
 * Job ids carry their type (`echo.3f9c…`), so any id can be routed to its queue without an index.
 * Ids from an Idempotency-Key are a hash of (producer, type, key): stable, and revealing nothing
 * of the key itself.
 */
export function newJobId(jobType: string): string {
  return `${jobType}.${randomUUID().replaceAll('-', '')}`;
}

export function idempotentJobId(jobType: string, producer: string, key: string): string {
  const h = createHash('sha256').update(`${producer}\0${jobType}\0${key}`).digest('hex').slice(0, 40);
  return `${jobType}.k${h}`;
}

const JOB_ID = /^([a-z][a-z0-9-]{0,62})\.(k?[0-9a-f]{32,40})$/;

/** The job type named by an id, or `null` when the id is not one of ours. */
export function jobTypeOfId(id: string): string | null {
  const type = JOB_ID.exec(id)?.[1];
  return type !== undefined && JOB_TYPE_NAME.test(type) ? type : null;
}

/** Idempotency keys: 1–200 visible ASCII characters. */
export const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,200}$/;
