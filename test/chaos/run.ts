/**
 * `npm run test:chaos`: the reliability suite against real processes and real Redis. Prints each
 * scenario's figures (`--json`: one JSON object). `--quick` runs the smaller sizes used by CI.
 */
import { parseArgs } from 'node:util';
import { fuzz, killWorkers, load, redisRestart, runaways, vaultOutage } from './scenarios.js';

const { values: args } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    /** A directory: the load scenarios write two heap snapshots of the supervisor there. */
    'heap-snapshots': { type: 'string' },
  },
});
const quick = args.quick;
const heapSnapshots = args['heap-snapshots'] ? { heapSnapshots: args['heap-snapshots'] } : {};
const scenarios: [string, () => Promise<Record<string, unknown>>][] = [
  ['killWorkers', () => killWorkers({ jobs: quick ? 200 : 1000, kills: quick ? 2 : 5 })],
  ['redisRestartAlways', () => redisRestart({ fsync: 'always', seconds: quick ? 4 : 10 })],
  ['redisRestartEverysec', () => redisRestart({ fsync: 'everysec', seconds: quick ? 4 : 10 })],
  ['vaultOutage', () => vaultOutage({ jobs: quick ? 60 : 200, outageMs: quick ? 2000 : 4000 })],
  ['runaways', () => runaways()],
  ['fuzz', () => fuzz({ requests: quick ? 2000 : 10_000 })],
  ['load', () => load({ seconds: quick ? 10 : 60, ...heapSnapshots })],
  // Only when named (`--only soak`): the 10-minute run of the load scenario whose RSS must plateau.
  ['soak', () => load({ seconds: 600, ...heapSnapshots })],
];
const out: Record<string, unknown> = {};
let failed = 0;
for (const [name, run] of scenarios) {
  if (args.only ? !args.only.split(',').includes(name) : name === 'soak') continue;
  const t = Date.now();
  try {
    out[name] = await run();
  } catch (err) {
    failed++;
    out[name] = { error: (err as Error).message };
  }
  if (!args.json)
    process.stderr.write(`${name} (${((Date.now() - t) / 1000).toFixed(1)} s): ${JSON.stringify(out[name])}\n`);
}
if (args.json) process.stdout.write(`${JSON.stringify(out)}\n`);
process.exit(failed ? 1 : 0);
