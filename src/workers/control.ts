/** Messages on the fleet's control channel (Redis pub/sub), heard by every supervisor. */
export type ControlMessage = { kind: 'cancel'; jobId: string };

export function parseControlMessage(raw: string): ControlMessage | null {
  try {
    const m = JSON.parse(raw) as Partial<ControlMessage>;
    return m.kind === 'cancel' && typeof m.jobId === 'string' ? { kind: 'cancel', jobId: m.jobId } : null;
  } catch {
    return null;
  }
}
