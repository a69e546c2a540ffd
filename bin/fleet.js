#!/usr/bin/env -S node --disable-sigusr1
// --disable-sigusr1: a SIGUSR1 (from anything running as this user) must not open the V8 inspector
// in a supervisor that holds credentials. `node bin/fleet.js` callers pass it too (npm start, Dockerfile).
import { main } from '../dist/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`fleet: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
