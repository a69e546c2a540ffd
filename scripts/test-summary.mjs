// Prints "N passed, N failed" summed over vitest JSON reports (one per Node version), after a
// line per report; exits 1 if a report is missing or unreadable.
import { readFileSync } from 'node:fs';

const files = process.argv.slice(2);
if (files.length === 0) files.push('test-results/vitest.json');
let passed = 0;
let failed = 0;
let skipped = 0;
let status = 0;
for (const file of files) {
  let report;
  try {
    report = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    console.error(`test summary: could not read ${file}: ${err.message}`);
    failed += 1;
    status = 1;
    continue;
  }
  // A file that fails to load counts as a failure even though none of its tests ran.
  const brokenFiles = (report.testResults ?? []).filter(
    (f) => f.status === 'failed' && (f.assertionResults ?? []).length === 0,
  ).length;
  const s = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
  console.log(`${file}: ${report.numPassedTests} passed, ${report.numFailedTests + brokenFiles} failed, ${s} skipped`);
  passed += report.numPassedTests;
  failed += report.numFailedTests + brokenFiles;
  skipped += s;
}
if (skipped) console.log(`(${skipped} skipped in all; see the reasons printed above)`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(status);
