// `npm run test:hostile [-- --json]`: the hostile-processor suite alone. With --json, vitest's JSON
// report (every attack, its outcome per layer, the detail each processor reported) goes to stdout
// and to test-results/hostile.json.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';

const json = process.argv.includes('--json');
const out = 'test-results/hostile.json';
if (json) mkdirSync('test-results', { recursive: true });
const args = [
  'vitest',
  'run',
  'test/hostile.test.ts',
  'test/boundary.test.ts',
  'test/resource-limits.test.ts',
  ...(json ? ['--reporter=json', `--outputFile=${out}`, '--silent'] : []),
];
const r = spawnSync('npx', args, { stdio: json ? ['ignore', 'ignore', 'inherit'] : 'inherit' });
if (json) process.stdout.write(readFileSync(out, 'utf8'));
process.exit(r.status ?? 1);
