/** Fast checks without servers. */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { makeLogger } from '../src/observability/logger.js';
import { FIXTURES } from './helpers/fleet.js';

const SRC = path.join(FIXTURES, '..', '..', 'src');

describe('logs and messages', () => {
  it('writes each key once per JSON line, however scopes nest (later scopes win)', () => {
    const lines: string[] = [];
    const destination = new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) });
    const log = makeLogger({ level: 'info', destination: destination as never });
    log.scope({ component: 'rotation', secret: 'a' }).scope({ component: 'audit' }).info('hello', { secret: 'b' });
    const line = lines[0]!;
    expect(line.match(/"component"/g)).toHaveLength(1);
    expect(line.match(/"secret"/g)).toHaveLength(1);
    expect(JSON.parse(line)).toMatchObject({ component: 'audit', secret: 'b', msg: 'hello' });
  });

  it('names Redis, not the RedisClient type, in every message and comment', () => {
    const hits: string[] = [];
    const walk = (dir: string): void => {
      for (const f of readdirSync(dir)) {
        const p = path.join(dir, f);
        if (statSync(p).isDirectory()) walk(p);
        else if (p.endsWith('.ts')) {
          readFileSync(p, 'utf8')
            .split('\n')
            .forEach((line, i) => {
              // Type positions (imports, annotations, generics, unions) are the type's own name.
              const prose = line.replace(/^import .*$/, '').replace(/(: |<|\(|\| |type |as )RedisClient\b/g, '');
              if (/\bRedisClient\b/.test(prose)) hits.push(`${path.relative(SRC, p)}:${i + 1}: ${line.trim()}`);
            });
        }
      }
    };
    walk(SRC);
    expect(hits).toEqual([]);
  });

  it('loads no backend SDK when the provider registry is imported (node-vault and the AWS SDK load on demand)', () => {
    const dist = path.join(SRC, '..', 'dist');
    const script = `const { createRequire } = await import('node:module');
      await import(${JSON.stringify(path.join(dist, 'secrets', 'providers.js'))});
      const loaded = Object.keys(createRequire(import.meta.url).cache);
      console.log(JSON.stringify(loaded.filter((k) => /node_modules[\\/](node-vault|@aws-sdk)/.test(k)).length));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toBe(0);
    // Nor does the CLI, or a process of any role before it starts one (the API's express and Bull
    // Board included: a worker never loads them).
    for (const entry of [path.join('cli', 'main.js'), 'app.js']) {
      const other = spawnSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          script
            .replace(path.join('secrets', 'providers.js'), entry)
            .replace('node-vault|@aws-sdk', 'node-vault|@aws-sdk|express|@bull-board'),
        ],
        { encoding: 'utf8' },
      );
      expect(other.stderr, entry).toBe('');
      expect(JSON.parse(other.stdout), entry).toBe(0);
    }
    // The check can fail: importing the Vault provider itself does load node-vault.
    const control = spawnSync(
      process.execPath,
      ['--input-type=module', '-e', script.replace('providers.js', 'vault-provider.js')],
      { encoding: 'utf8' },
    );
    expect(JSON.parse(control.stdout)).toBeGreaterThan(0);
  });

  it('a supervisor loads the X.509 library (and its Reflect polyfill) only for types with injected secrets', () => {
    const dist = path.join(SRC, '..', 'dist');
    const script = (file: string): string =>
      `await import(${JSON.stringify(path.join(dist, 'workers', file))}); console.log(typeof Reflect.getMetadata);`;
    const sup = spawnSync(process.execPath, ['--input-type=module', '-e', script('supervisor.js')], {
      encoding: 'utf8',
    });
    expect(sup.stderr).toBe('');
    expect(sup.stdout.trim()).toBe('undefined');
    // The check can fail: the CA module does load it.
    const ca = spawnSync(process.execPath, ['--input-type=module', '-e', script('egress-ca.js')], { encoding: 'utf8' });
    expect(ca.stdout.trim()).toBe('function');
  });

  it('packs only the product: dist (without bench, chaos, test servers) and bin', () => {
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
      cwd: path.join(SRC, '..'),
      encoding: 'utf8',
    });
    const files = (JSON.parse(r.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
    expect(files).toContain('bin/fleet.js');
    expect(files).toContain('dist/workers/sandbox-entry.js');
    expect(files.filter((f) => /^(test|src|scripts|\.ci)\/|^dist\/(bench|chaos|dev)\//.test(f))).toEqual([]);
  });
});
