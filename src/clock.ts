/**
 * Time as the services read it, injected (as pg-boss does) so that what depends on it (a spare
 * token's age, a rotation being due, a version's grace window, a heartbeat going stale) can be
 * tested by moving a clock instead of sleeping.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A clock a test moves by hand. */
export class ManualClock implements Clock {
  #now: number;

  constructor(start = Date.now()) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  advance(ms: number): void {
    this.#now += ms;
  }
}
