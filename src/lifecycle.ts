/**
 * An explicit lifecycle for the long-lived services (the supervisor, the rotation scheduler): the
 * states each may be in and the moves between them, so a call out of turn (a second `start()`, a
 * `start()` after `stop()`) is refused with IllegalStateError instead of half-running twice.
 */
import { IllegalStateError } from './errors.js';

export type ServiceState = 'new' | 'starting' | 'running' | 'draining' | 'stopped' | 'failed';
/** A state a service moves into (none moves back to `new`). */
export type ReachedState = Exclude<ServiceState, 'new'>;

/** The moves a service may make. `failed`: a start that did not complete (what it opened is closed again). */
const MOVES: Readonly<Record<ServiceState, readonly ReachedState[]>> = {
  new: ['starting', 'stopped'],
  starting: ['running', 'failed'],
  running: ['draining'],
  draining: ['stopped'],
  failed: ['stopped'],
  stopped: [],
};

export class Lifecycle {
  readonly #name: string;
  #state: ServiceState = 'new';
  readonly #onChange: (state: ReachedState, previous: ServiceState) => void;

  constructor(name: string, onChange: (state: ReachedState, previous: ServiceState) => void = () => undefined) {
    this.#name = name;
    this.#onChange = onChange;
  }

  get state(): ServiceState {
    return this.#state;
  }

  /** Whether `next` is a move allowed from here. */
  can(next: ReachedState): boolean {
    return MOVES[this.#state].includes(next);
  }

  /** Moves to `next`, or throws IllegalStateError naming both states and the fix. */
  to(next: ReachedState): void {
    if (!this.can(next)) {
      const fix =
        next === 'starting'
          ? this.#state === 'stopped' || this.#state === 'failed'
            ? 'create a new instance to start again'
            : 'start() was already called; await it instead of calling it again'
          : 'this call does not apply in this state';
      throw new IllegalStateError(`${this.#name} cannot go from "${this.#state}" to "${next}". Fix: ${fix}.`);
    }
    const previous = this.#state;
    this.#state = next;
    this.#onChange(next, previous);
  }
}
