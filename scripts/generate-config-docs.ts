// Writes the configuration reference in docs/configuration.md from the TSDoc of src/config/schema.ts
// (run: npm run docs:config). A test fails when the committed file differs from what this writes.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { configurationDoc } from './config-reference.js';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const docPath = path.join(root, 'docs', 'configuration.md');
const next = configurationDoc(
  readFileSync(docPath, 'utf8'),
  readFileSync(path.join(root, 'src', 'config', 'schema.ts'), 'utf8'),
);
writeFileSync(docPath, next);
console.log('wrote docs/configuration.md');
