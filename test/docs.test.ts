/**
 * The docs cannot drift from the code: the configuration reference is what the schema's TSDoc
 * generates, and every link between the docs (and every `docs/…md#anchor` the code points users
 * at) lands on a heading that exists.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { anchorOf, configReference, configurationDoc } from '../scripts/config-reference.js';
import { FIXTURES } from './helpers/fleet.js';

const ROOT = path.join(FIXTURES, '..', '..');
const read = (f: string): string => readFileSync(path.join(ROOT, f), 'utf8');
const SCHEMA = 'src/config/schema.ts';
const DOCS = ['README.md', 'CONTRIBUTING.md', ...readdirSync(path.join(ROOT, 'docs')).map((f) => `docs/${f}`)].filter(
  (f) => f.endsWith('.md'),
);

/** GitHub's anchors of a Markdown file's headings (outside code fences), duplicates numbered. */
function anchorsOf(file: string): Set<string> {
  const out = new Set<string>();
  const seen = new Map<string, number>();
  let fence = false;
  for (const line of read(file).split('\n')) {
    if (line.startsWith('```')) fence = !fence;
    const m = fence ? null : /^#{1,6}\s+(.*)$/.exec(line);
    if (!m?.[1]) continue;
    const a = anchorOf(m[1].trim());
    const n = seen.get(a) ?? 0;
    seen.set(a, n + 1);
    out.add(n === 0 ? a : `${a}-${n}`);
  }
  return out;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(`${dir}/${e.name}`) : /\.(ts|mjs|sh)$/.test(e.name) ? [`${dir}/${e.name}`] : [],
  );
}

describe('configuration reference', () => {
  it('regenerating docs/configuration.md from the schema changes nothing', () => {
    expect(
      configurationDoc(read('docs/configuration.md'), read(SCHEMA)),
      'docs/configuration.md is stale: run npm run docs:config',
    ).toBe(read('docs/configuration.md'));
  });

  it('every setting has a description, and every optional one says what unset means', () => {
    expect(configReference(read(SCHEMA)).problems).toEqual([]);
  });

  it('lists the settings the hand-written table had missed', () => {
    const ref = configReference(read(SCHEMA));
    const settings = ref.sections.flatMap((s) => s.rows.map((r) => (s.path ? `${s.path}.${r.setting}` : r.setting)));
    for (const s of [
      'supervisor.metricsPort',
      'supervisor.lockDurationMs',
      'supervisor.stalledIntervalMs',
      'api.bullBoard.enabled',
      'api.bullBoard.path',
      'api.bullBoard.readOnly',
      'jobTypes[].limits.maxEgressRefusals',
      'secrets.items.<name>.rotation.rotator.adminUrlEnv',
    ])
      expect(settings, s).toContain(s);
    const sup = ref.sections.find((s) => s.path === 'supervisor');
    expect(sup?.rows.find((r) => r.setting === 'lockDurationMs')).toMatchObject({
      type: '`integer` ≥ 1000',
      default: '`30000`',
    });
  });

  it('refuses a schema field without TSDoc, naming it', () => {
    const bare = read(SCHEMA).replace(/\/\*\* The interface of `\/metrics`[^\n]*\*\/\n\s*metricsHost/, 'metricsHost');
    expect(bare).not.toBe(read(SCHEMA));
    expect(configReference(bare).problems).toEqual(['supervisor.metricsHost: no TSDoc description']);
    expect(() => configurationDoc(read('docs/configuration.md'), bare)).toThrow(
      /1 field\(s\) cannot be documented[\s\S]*supervisor\.metricsHost: no TSDoc description/,
    );
  });
});

describe('links', () => {
  it('every relative link in README, CONTRIBUTING and docs/ reaches a file and a heading that exist', () => {
    const broken: string[] = [];
    for (const file of DOCS) {
      for (const m of read(file).matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1] ?? '';
        if (/^[a-z]+:/.test(target)) continue;
        const [p = '', anchor] = target.split('#');
        const to = p ? path.posix.normalize(path.posix.join(path.posix.dirname(file), p)) : file;
        const ok = existsSync(path.join(ROOT, to)) && (!anchor || (to.endsWith('.md') && anchorsOf(to).has(anchor)));
        if (!ok) broken.push(`${file}: ${target}`);
      }
    }
    expect(broken).toEqual([]);
  });

  it('every docs/…md#anchor the code, compose file and Dockerfile point to exists', () => {
    const files = [...sourceFiles('src'), ...sourceFiles('scripts'), 'docker-compose.yml', 'Dockerfile'];
    const pointers: string[] = [];
    const broken: string[] = [];
    for (const f of files)
      for (const m of read(f).matchAll(/docs\/([a-z-]+\.md)(?:#([a-z0-9-]+))?/g)) {
        pointers.push(m[0]);
        const doc = `docs/${m[1] ?? ''}`;
        if (!DOCS.includes(doc) || (m[2] && !anchorsOf(doc).has(m[2]))) broken.push(`${f}: ${m[0]}`);
      }
    expect(pointers.length).toBeGreaterThan(5);
    expect(broken).toEqual([]);
  });
});
