import type { Processor } from 'fleet';

/** Chaos: each mode misbehaves in its own way; the fleet must contain all of them. */
const runaway: Processor<{ mode: 'loop' | 'alloc' | 'timers' | 'huge' | 'flood' }> = async (job) => {
  switch (job.data.mode) {
    case 'loop':
      for (;;) {
        /* never yields */
      }
    case 'alloc': {
      const hoard: number[][] = [];
      for (let i = 0; i < 1e9; i++) hoard.push(new Array<number>(1_000_000).fill(i)); // ~1 GB per 128 arrays
      return hoard.length;
    }
    case 'timers': {
      // A fork bomb of timers and promises.
      const bomb = (): void => {
        for (let i = 0; i < 1000; i++) setTimeout(bomb, 0);
        void Promise.resolve().then(bomb);
      };
      bomb();
      return new Promise(() => undefined);
    }
    case 'huge':
      return 'x'.repeat(64 * 1024 * 1024);
    case 'flood':
      for (let i = 0; i < 200_000; i++) console.log(`flood line ${i}`);
      return 'flooded';
  }
};
export default runaway;
