/**
 * Job data at rest: a producer seals the payload of a type with `encryptData` before it leaves the
 * process, and opens what it stored (to compare an Idempotency-Key's body, or for the job's owner).
 */
import type { Job } from 'bullmq';
import { dataKeyProvider, type FleetConfig, type JobType } from '../config/resolve.js';
import { DataKeyUnavailableError, FleetError } from '../errors.js';
import type { RedisClient } from '../redis/connection.js';
import type { DataKeyRing } from '../secrets/data-key.js';
import { envelopeVersion, sealedEnvelope, type SealContext, type SealedField } from '../secrets/job-data-seal.js';
import type { SecretProvider } from '../secrets/provider.js';
import type { JobView } from './job-view.js';

/** The data key of a producer and the producers made from it with withName(): opened once, on first use. */
export class JobDataSealer {
  #opened: Promise<{ ring: DataKeyRing; provider: SecretProvider | null }> | null;
  readonly #open: () => Promise<{ ring: DataKeyRing; provider: SecretProvider | null }>;
  readonly none: boolean;

  constructor(given: DataKeyRing | null | undefined, config: FleetConfig, redis: RedisClient) {
    this.none = given === null;
    this.#opened = given ? Promise.resolve({ ring: given, provider: null }) : null;
    this.#open = async () => {
      const { makeProvider, dataKeyRing } = await import('../secrets/providers.js');
      const { silentLogger } = await import('../observability/logger.js');
      const provider = await makeProvider(dataKeyProvider(config), config, { redis, logger: silentLogger });
      return { ring: dataKeyRing(config, provider), provider };
    };
  }

  ring(type: JobType): Promise<DataKeyRing> {
    if (this.none)
      return Promise.reject(
        new DataKeyUnavailableError(
          `job type "${type.name}" seals its data at rest (encryptData), and this producer holds no data key (a read-only view). Fix: enqueue through the HTTP API or a producer made with the data key.`,
          { retryable: false },
        ),
      );
    if (!this.#opened) {
      const opening = this.#open();
      this.#opened = opening;
      // A store that could not be opened is tried again by the next call.
      opening.catch(() => {
        if (this.#opened === opening) this.#opened = null;
      });
    }
    return this.#opened.then((o) => o.ring);
  }

  /** What BullMQ stores as the job's data: the payload, sealed for a type with `encryptData`. */
  async seal(type: JobType, id: string, owner: string, payload: unknown): Promise<unknown> {
    if (!type.encryptData) return payload;
    const ring = await this.ring(type);
    return ring.seal({ jobType: type.name, jobId: id, owner, field: 'payload' }, payload);
  }

  /** A stored job's payload as enqueued (opened, for a type with `encryptData`). */
  async payloadOf(type: JobType, job: Job): Promise<unknown> {
    if (!type.encryptData) return job.data;
    const ring = await this.ring(type);
    return ring.open({ jobType: type.name, jobId: job.id ?? '', owner: job.name, field: 'payload' }, job.data);
  }

  /**
   * The view with its sealed fields opened (a type with `encryptData`; others are returned as
   * they are). A field that cannot be opened (tampered, sealed under a retired key) stays sealed,
   * with the code of the reason beside it.
   */
  async openView(type: JobType, view: JobView): Promise<JobView> {
    if (!type.encryptData) return view;
    const ring = await this.ring(type);
    const ctx = (field: SealedField): SealContext => ({ jobType: type.name, jobId: view.id, owner: view.owner, field });
    const open = async (field: SealedField, stored: unknown): Promise<unknown> => {
      if (sealedEnvelope(stored) === null) return stored;
      try {
        return await ring.open(ctx(field), stored);
      } catch (err) {
        if (!(err instanceof FleetError)) throw err;
        return { ...Object(stored), openError: err.code };
      }
    };
    let error = view.error;
    if (error && envelopeVersion(error.message) !== null) {
      const message = await ring.openText(ctx('failure'), error.message).catch((err: unknown) => {
        if (!(err instanceof FleetError)) throw err;
        return `${error?.message ?? ''} (not opened: ${err.code})`;
      });
      error = { code: error.code, message };
    }
    return {
      ...view,
      data: await open('payload', view.data),
      result: await open('result', view.result),
      progress: await open('progress', view.progress),
      error,
    };
  }

  async close(): Promise<void> {
    const opened = await this.#opened?.catch(() => null);
    this.#opened = null;
    if (opened?.provider) {
      opened.ring.discard();
      await opened.provider.close();
    }
  }
}
