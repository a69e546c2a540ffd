// Prints "N passed, N failed" summed over vitest JSON reports (one per Node version), after a
// line per report and one per failed test (its file, name and first message line, so the tail of a
// CI log says what broke); exits 1 if a report is missing or unreadable.
import { readFileSync } from 'node:fs';

const files = process.argv.slice(2);
if (files.length === 0) files.push('test-results/vitest.json');
let passed = 0;
let failed = 0;
let skipped = 0;
let status = 0;
const failures = [];
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
  for (const f of report.testResults ?? []) {
    const name = f.name.replace(`${process.cwd()}/`, '');
    const failedTests = (f.assertionResults ?? []).filter((t) => t.status === 'failed');
    if (f.status === 'failed' && failedTests.length === 0) failures.push(`${file}: ${name}: ${firstLine(f.message)}`);
    for (const t of failedTests)
      failures.push(`${file}: ${name} > ${t.fullName}: ${firstLine(t.failureMessages?.[0])}`);
  }
  const s = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
  console.log(`${file}: ${report.numPassedTests} passed, ${report.numFailedTests + brokenFiles} failed, ${s} skipped`);
  passed += report.numPassedTests;
  failed += report.numFailedTests + brokenFiles;
  skipped += s;
}
for (const line of failures) console.log(`FAILED ${line}`);
if (skipped) console.log(`(${skipped} skipped in all; see the reasons printed above)`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(status);

function firstLine(text) {
  const line =
    String(text ?? '')
      .replace(/\x1b\[[0-9;]*m/g, '')
      .split('\n')
      .find((l) => l.trim()) ?? '(no message)';
  return line.trim().slice(0, 300);
}
