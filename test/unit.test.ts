/** Fast checks without servers. */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
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
          readFileSync(p, 'utf8').split('\n').forEach((line, i) => {
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
});
