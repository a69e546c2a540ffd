/** What callers see of a job and of a job type: the API's answers and `fleet job`'s output. */
import type { Job } from 'bullmq';
import type { JobType } from '../config/resolve.js';
import { parseFailedReason } from '../errors.js';

export type JobState =
  'waiting' | 'delayed' | 'prioritized' | 'active' | 'completed' | 'failed' | 'waiting-children' | 'unknown';

/** What anyone may see of a job: never secret values (jobs never hold any). */
export interface JobView {
  id: string;
  type: string;
  /** The producer that enqueued it (HTTP: the token's producer name; TypeScript client: its `name`). */
  owner: string;
  state: JobState;
  attemptsMade: number;
  maxAttempts: number;
  progress: unknown;
  data: unknown;
  result: unknown;
  error: { code: string; message: string } | null;
  timings: { enqueuedAt: number; startedAt: number | null; finishedAt: number | null; durationMs: number | null };
}

export interface JobTypeView {
  name: string;
  description: string;
  sensitivity: 'critical' | 'routine';
  isolation: 'job' | 'pool';
  timeoutMs: number;
  concurrency: number;
  secrets: readonly string[];
  payloadSchema: Record<string, unknown>;
}

/** A stored job as its view; `state` is read before the job (see Producer's lookup). */
export function jobViewOf(id: string, type: JobType, job: Job, state: JobState): JobView {
  const failed = state === 'failed' || (job.failedReason && state !== 'completed') ? job.failedReason : '';
  return {
    id,
    type: type.name,
    owner: job.name,
    state,
    attemptsMade: job.attemptsMade,
    maxAttempts: job.opts.attempts ?? 1,
    progress: job.progress,
    data: job.data,
    result: state === 'completed' ? (job.returnvalue ?? null) : null,
    error: failed ? parseFailedReason(failed) : null,
    timings: {
      enqueuedAt: job.timestamp,
      startedAt: job.processedOn ?? null,
      finishedAt: job.finishedOn ?? null,
      durationMs: job.finishedOn && job.processedOn ? job.finishedOn - job.processedOn : null,
    },
  };
}

export function jobTypeViewOf(t: JobType): JobTypeView {
  return {
    name: t.name,
    description: t.description,
    sensitivity: t.sensitivity,
    isolation: t.isolation,
    timeoutMs: t.timeoutMs,
    concurrency: t.concurrency,
    secrets: t.secrets,
    payloadSchema: t.payloadJsonSchema,
  };
}
