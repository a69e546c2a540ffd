/**
 * An upstream is as untrusted as the sandbox that reaches it (an attacker's own host under
 * `egress: "any"`, or a bound service that reflects what it is sent). A loopback HTTPS "bound
 * service" (test CA) reflects the injected Authorization value where a whole-value mask of the
 * body would miss it: gzip-compressed despite `accept-encoding: identity`, in a response header's
 * name, in slices chosen by a Range header; plus upstreams answering with a status below 100,
 * which Node's writeHead throws on. Found by an attacker's review; each case asserts the refusal
 * and that nothing was thrown out of a handler (an uncaught exception would end the supervisor).
 */
import https from 'node:https';
import net from 'node:net';
import zlib from 'node:zlib';
import type { AddressInfo } from 'node:net';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { EgressCa } from '../src/workers/egress-ca.js';
import type { Producer } from '../src/producers/producer.js';
import type { Supervisor } from '../src/workers/supervisor.js';
import { fixtureType, localStore, makeProducer, startSupervisor, testConfig, waitForJob } from './helpers/fleet.js';
import { afterAll, beforeAll, describe, expect, fleetFileTest as it } from './helpers/fixture.js';

// Mixed case: Node lowercases the header names it reads, which a mask must not be fooled by.
const TOKEN = 'sk-live-Injected-0123456789ABCDEF';

/** The body of a raw HTTP/1.1 response, taken out of its chunked framing (the proxy re-chunks). */
function dechunk(raw: string): string {
  let body = raw.slice(raw.indexOf('\r\n\r\n') + 4);
  if (!/transfer-encoding: chunked/i.test(raw.slice(0, raw.indexOf('\r\n\r\n')))) return body;
  let data = '';
  while (body.length) {
    const nl = body.indexOf('\r\n');
    const n = parseInt(body.slice(0, nl), 16);
    if (!n) break;
    data += body.slice(nl + 2, nl + 2 + n);
    body = body.slice(nl + 2 + n + 2);
  }
  return data;
}

let plainUpstream: net.Server;
let plainPort: number;
let server: https.Server;
let port: number;
let testCa: EgressCa;
const uncaught: unknown[] = [];
const onUncaught = (err: unknown): void => void uncaught.push(err);
beforeAll(async () => {
  testCa = await EgressCa.load(mkdtempSync(path.join(tmpdir(), 'fleet-test-ca-')));
  const pem = await testCa.leafPem('127.0.0.1');
  server = https.createServer(pem, (req, res) => {
    const auth = String(req.headers.authorization ?? '');
    const token = auth.replace(/^Bearer /, '');
    if (req.url === '/gzip') {
      // Ignores accept-encoding: identity (many servers and CDNs compress regardless).
      res.writeHead(200, { 'content-encoding': 'gzip', 'content-type': 'application/json' });
      res.end(zlib.gzipSync(JSON.stringify({ youSent: auth })));
    } else if (req.url === '/hname') {
      res.setHeader(`x-${token}`, '1');
      res.end('ok');
    } else if (req.url === '/range') {
      // An echo endpoint that honours Range (as static/echo services do).
      const body = Buffer.from(JSON.stringify({ youSent: auth }));
      const m = /bytes=(\d+)-(\d+)/.exec(String(req.headers.range ?? ''));
      if (m) {
        res.writeHead(206, { 'content-range': `bytes ${m[1]}-${m[2]}/${body.length}` });
        res.end(body.subarray(Number(m[1]), Number(m[2]) + 1));
      } else res.end(body);
    } else if (req.url === '/status99') {
      // Raw: Node's server will not send 099 itself.
      req.socket.write('HTTP/1.1 099 Weird\r\nContent-Length: 0\r\n\r\n');
      req.socket.end();
    } else res.end(JSON.stringify({ youSent: auth }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  port = (server.address() as AddressInfo).port;
  plainUpstream = net.createServer((sock) => {
    sock.on('error', () => undefined);
    sock.once('data', () => sock.end('HTTP/1.1 099 Weird\r\nContent-Length: 0\r\n\r\n'));
  });
  await new Promise<void>((r) => plainUpstream.listen(0, '127.0.0.1', () => r()));
  plainPort = (plainUpstream.address() as AddressInfo).port;
  process.on('uncaughtException', onUncaught);
});
afterAll(() => {
  process.off('uncaughtException', onUncaught);
  server?.close();
  plainUpstream?.close();
});

describe('injecting egress proxy: response masking and handler containment', () => {
  let sup: Supervisor;
  let producer: Producer;
  it.beforeAll(async ({ redis }) => {
    const b = `127.0.0.1:${port}`;
    const config = testConfig(
      redis.url,
      [
        fixtureType('caller', 'hostile/raw-proxy.mjs', {
          sandbox: 'process',
          secrets: ['api-token'],
          egress: [b],
          isolation: 'pool',
          timeoutMs: 10_000,
        }),
      ],
      {
        supervisor: { metricsPort: 0, heartbeatMs: 500, shutdownDeadlineMs: 2000, upstreamCaFile: testCa.certFile },
        secrets: { items: { 'api-token': { binding: { hosts: [b] } } } },
      },
    );
    await localStore(config.dataDir, 2).write('api-token', Buffer.from(TOKEN));
    sup = await startSupervisor({ config });
    producer = makeProducer(config);
  });
  const req = (p: string, extra = ''): string =>
    `GET ${p} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer {ph}\r\n${extra}Connection: close\r\n\r\n`;
  const run = async (data: Record<string, unknown>): Promise<{ text: string; gunzipped?: string; ph: string }> => {
    const job = await waitForJob(
      producer,
      (await producer.enqueue('caller', { tls: `127.0.0.1:${port}`, secret: 'api-token', ...data })).id,
      20_000,
    );
    expect(job.state, JSON.stringify(job.error)).toBe('completed');
    return job.result as { text: string; gunzipped?: string; ph: string };
  };

  it('control: a plain reflection is masked', async () => {
    const r = await run({ raw: req('/echo') });
    // The masker may split the body into chunks anywhere (it holds back a value's length - 1).
    expect(dechunk(r.text)).toContain(r.ph);
    expect(dechunk(r.text)).not.toContain(TOKEN);
    expect(r.text).not.toContain(TOKEN);
  });

  it('a compressed reflection (the upstream ignores accept-encoding: identity) is refused with 502, not passed on', async () => {
    const r = await run({ raw: req('/gzip') });
    expect(r.gunzipped ?? '').not.toContain(TOKEN);
    expect(r.text).toMatch(/^HTTP\/1\.1 502[\s\S]*answered with Content-Encoding gzip although asked for identity/);
  });

  it("a reflection in a response header's name is masked, in any case", async () => {
    const r = await run({ raw: req('/hname') });
    expect(r.text.toLowerCase()).not.toContain(TOKEN.toLowerCase());
    expect(r.text.toLowerCase()).toContain(`x-${r.ph.toLowerCase()}: 1`);
  });

  it('slices chosen by a Range header do not rebuild the value: Range is not forwarded with an injected value', async () => {
    let recovered = '';
    // {"youSent":"Bearer <token>"} : the token starts at byte 19
    for (let at = 19; at < 19 + TOKEN.length; at += 8) {
      const r = await run({ raw: req('/range', `Range: bytes=${at}-${at + 7}\r\n`) });
      recovered += dechunk(r.text);
    }
    expect(recovered).not.toContain(TOKEN);
  });

  it('pipelined on one terminated connection: the 2nd request (Host of another port) is checked on its own', async () => {
    const first = `GET /echo HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer {ph}\r\n\r\n`;
    const second = `GET /echo HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAuthorization: Bearer {ph}\r\nConnection: close\r\n\r\n`;
    const r = await run({ raw: first + second });
    expect(r.text).not.toContain(TOKEN);
    expect(r.text).toMatch(/403/);
  });

  it('an upstream status 099 on the terminated path is answered 502; nothing is thrown in the supervisor', async () => {
    const before = uncaught.length;
    await waitForJob(
      producer,
      (await producer.enqueue('caller', { tls: `127.0.0.1:${port}`, secret: 'api-token', raw: req('/status99') })).id,
      20_000,
    );
    const caught = uncaught.slice(before).map((e) =>
      String((e as Error).stack ?? e)
        .split('\n')
        .slice(0, 3)
        .join(' | '),
    );
    expect(caught).toEqual([]);
    expect(sup.state).toBe('running');
  });
});

describe.each([['off'], ['auto']] as const)('egress proxy, upstream status < 100 (osLayer %s)', (osLayer) => {
  it('plain-HTTP forward: answered 502, nothing thrown in the supervisor; another type still runs', async ({
    redis,
  }) => {
    const config = testConfig(
      redis.url,
      [
        fixtureType('raw', 'hostile/raw-proxy.mjs', {
          sandbox: 'process',
          egress: [`127.0.0.1:${plainPort}`],
          timeoutMs: 10_000,
        }),
        fixtureType('bystander', 'ok.mjs', { sandbox: 'process' }),
      ],
      { supervisor: { metricsPort: 0, heartbeatMs: 500, shutdownDeadlineMs: 2000, osLayer } },
    );
    const sup = await startSupervisor({ config });
    const producer = makeProducer(config);
    const before = uncaught.length;
    const job = await waitForJob(
      producer,
      (await producer.enqueue('raw', { plain: `127.0.0.1:${plainPort}` })).id,
      20_000,
    );
    expect(JSON.stringify(job.result)).toMatch(/502/);
    const caught = uncaught.slice(before).map((e) =>
      String((e as Error).stack ?? e)
        .split('\n')
        .slice(0, 6)
        .join('\n'),
    );
    expect(caught, 'uncaught exceptions in the supervisor process').toEqual([]);
    expect(sup.state).toBe('running');
    expect((await waitForJob(producer, (await producer.enqueue('bystander', { a: 1 })).id)).state).toBe('completed');
  });
});
