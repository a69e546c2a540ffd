import { fieldOf } from '../errors.js';

/** Messages on the fleet's control channel (Redis pub/sub), heard by every supervisor. */
export type ControlMessage = { kind: 'cancel'; jobId: string };

export function parseControlMessage(raw: string): ControlMessage | null {
  try {
    const m: unknown = JSON.parse(raw);
    const jobId = fieldOf(m, 'jobId');
    return fieldOf(m, 'kind') === 'cancel' && typeof jobId === 'string' ? { kind: 'cancel', jobId } : null;
  } catch {
    return null;
  }
}
