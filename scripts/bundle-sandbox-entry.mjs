// The sandbox entry as one file, `sandbox-entry.bundle.cjs` beside `sandbox-entry.js` (in dist/ for
// the product, in build/ for the tooling that runs from there): part of `npm run build`.
//
// Every process sandbox of a `job` type starts Node and this entry once per job. Resolving and
// compiling the entry's own modules one by one (errors, channel, secret mask, processor API) cost
// ~4 ms of CPU per start here, above a bare Node start of ~30 ms; one file costs a fraction of it.
// CommonJS, so that Node runs it without its ES module loader, and the processor's module is
// `require()`d through the loader Node starts with anyway (sandbox-entry.ts, importModule). Node's
// own modules stay imports (they are part of the binary), and so does `tsx`, which only a thread
// sandbox loads, for a TypeScript processor.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let bundled = 0;
for (const dir of ['dist/workers', 'build/src/workers']) {
  const entry = path.join(root, dir, 'sandbox-entry.js');
  if (!existsSync(entry)) continue;
  await build({
    entryPoints: [entry],
    outfile: path.join(root, dir, 'sandbox-entry.bundle.cjs'),
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node22',
    external: ['tsx', 'tsx/*'],
    legalComments: 'none',
    logLevel: 'warning',
  });
  bundled++;
}
if (!bundled) throw new Error('no compiled sandbox entry to bundle. Fix: run `npm run build` (tsc first).');
