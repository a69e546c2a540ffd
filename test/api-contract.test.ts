/**
 * The HTTP API as a published contract: the OpenAPI document it serves is valid OpenAPI 3.1 (by a
 * real validator), and Schemathesis (a third-party contract fuzzer, from PyPI) runs every default
 * check against a live API built from that document: no 5xx, responses match the document, and so on.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import type { Server } from 'node:http';
import path from 'node:path';
import { Validator } from '@seriousme/openapi-schema-validator';
import { z } from 'zod';
import { sha256Hex } from '../src/api/auth.js';
import { listen } from '../src/api/api-server.js';
import { createApiApp } from '../src/api/http-api.js';
import { Producer } from '../src/producers/producer.js';
import { API_ERRORS } from '../src/api/api-schemas.js';
import { FIXTURES, fixtureType, startSupervisor, testConfig } from './helpers/fleet.js';
import { afterAll, describe, expect, it } from './helpers/fixture.js';
import type { FleetConfig } from '../src/config/resolve.js';

const ADMIN = 'contract-admin-token-0123456789';
const ST =
  process.env.FLEET_SCHEMATHESIS ?? path.join(homedir(), '.cache', 'fleet-test-servers', 'schemathesis', 'bin', 'st');
/** The schemathesis virtualenv's Python has `requests`, all the example client needs. */
const PYTHON = path.join(path.dirname(ST), 'python3');
let server: Server;
let producer: Producer;
let base: string;
let config: FleetConfig;

it.beforeAll(async ({ redis }) => {
  config = testConfig(
    redis.url,
    [
      fixtureType('greet', 'ok.mjs', {
        payloadSchema: z
          .object({ name: z.string().min(1).max(50), times: z.number().int().min(1).max(5).default(1) })
          .strict(),
        description: 'Says hello',
      }),
      fixtureType('any-json', 'ok.mjs'),
      fixtureType('slow', 'slow.mjs', {
        payloadSchema: z.object({ ms: z.number().int().min(0).max(10_000) }).strict(),
        timeoutMs: 20_000,
      }),
    ],
    {
      api: { bodyLimitBytes: 65_536, maxBatchSize: 20 },
      producers: [{ name: 'contract', tokenSha256: sha256Hex(ADMIN), jobTypes: ['*'], admin: true }],
    },
  );
  producer = new Producer({ config, name: 'api' });
  server = await listen(createApiApp({ producer }), '127.0.0.1', 0);
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(async () => {
  server?.closeAllConnections();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  await producer?.close();
});

async function document(): Promise<Record<string, unknown>> {
  const r = await fetch(`${base}/v1/openapi.json`, { headers: { authorization: `Bearer ${ADMIN}` } });
  expect(r.status).toBe(200);
  return (await r.json()) as Record<string, unknown>;
}

describe('the API contract', () => {
  it('serves a valid OpenAPI 3.1 document with a path per job type (its payload schema) and every error code', async () => {
    const doc = await document();
    const result = await new Validator().validate(doc as never);
    expect(result.errors ?? [], JSON.stringify(result.errors)).toEqual([]);
    expect(result.valid).toBe(true);
    const paths = doc.paths as Record<
      string,
      { post?: { requestBody?: { content: Record<string, { schema: { properties?: Record<string, unknown> } }> } } }
    >;
    expect(Object.keys(paths).sort()).toEqual([
      '/v1/audit',
      '/v1/job-types',
      '/v1/jobs/any-json',
      '/v1/jobs/any-json/batch',
      '/v1/jobs/greet',
      '/v1/jobs/greet/batch',
      '/v1/jobs/slow',
      '/v1/jobs/slow/batch',
      '/v1/jobs/{id}',
      '/v1/openapi.json',
    ]);
    expect(
      Object.keys(paths['/v1/jobs/greet']!.post!.requestBody!.content['application/json']!.schema.properties!),
    ).toEqual(['name', 'times']);
    const codes = (
      doc.components as { schemas: { Error: { properties: { error: { properties: { code: { enum: string[] } } } } } } }
    ).schemas.Error.properties.error.properties.code.enum;
    expect(codes.sort()).toEqual([...new Set(Object.values(API_ERRORS).flat())].sort());
  });

  it.skipIf(!existsSync(ST))(
    'passes Schemathesis with all its default checks against the live API (bounded)',
    async () => {
      const reports = path.join(FIXTURES, '..', '..', 'test-results', 'schemathesis');
      mkdirSync(reports, { recursive: true });
      // Asynchronously: the API it tests is served by this very process.
      const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(
          ST,
          [
            '--config-file',
            path.join(FIXTURES, '..', 'contract', 'schemathesis.toml'),
            'run',
            `${base}/v1/openapi.json`,
            '--header',
            `Authorization: Bearer ${ADMIN}`,
            '--max-examples',
            '25',
            '--seed',
            '7',
            '--request-timeout',
            '10',
            '--report',
            'junit',
            '--report-dir',
            reports,
            '--no-color',
          ],
          {
            env: { ...process.env, SCHEMATHESIS_TELEMETRY: 'false' },
          },
        );
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
        child.on('exit', (status) => {
          clearTimeout(timer);
          resolve({ status, stdout, stderr });
        });
      });
      const out = `${r.stdout}\n${r.stderr}`;
      console.info(out.split('\n').slice(-25).join('\n'));
      expect(r.status, out.slice(-6000)).toBe(0);
    },
    300_000,
  );

  it.skipIf(!existsSync(PYTHON))(
    'a Python client written against the document alone enqueues, polls and cancels (examples/python)',
    async () => {
      // The fuzzer's jobs (hundreds, no supervisor ran them) are dropped first: the client's job
      // would otherwise wait behind that backlog.
      for (const name of config.jobTypes.keys()) await producer.queue(name).obliterate({ force: true });
      await startSupervisor({ config });
      const r = await new Promise<{ status: number | null; out: string }>((resolve) => {
        const child = spawn(
          PYTHON,
          [
            path.join(FIXTURES, '..', '..', 'examples', 'python', 'fleet_client.py'),
            'greet',
            '{"name": "from python"}',
            'slow',
            '{"ms": 10000}',
          ],
          { env: { PATH: process.env.PATH ?? '', FLEET_URL: base, FLEET_TOKEN: ADMIN } },
        );
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (out += d.toString()));
        child.on('exit', (status) => resolve({ status, out }));
      });
      expect(r.status, r.out).toBe(0);
      const report = JSON.parse(r.out.trim().split('\n').pop()!) as {
        sameIdOnRetry: boolean;
        state: string;
        result: unknown;
        cancel: string;
      };
      expect(report).toMatchObject({
        sameIdOnRetry: true,
        state: 'completed',
        result: { got: { name: 'from python', times: 1 } },
      });
      expect(['removed', 'cancelling']).toContain(report.cancel);
    },
    60_000,
  );
});
if (!existsSync(ST))
  console.warn(
    `SKIPPING the Schemathesis run: ${ST} not found. Fix: bash scripts/install-test-servers.sh (installs schemathesis from PyPI)`,
  );
