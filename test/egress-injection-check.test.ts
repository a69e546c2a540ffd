/** The injecting egress proxy's decision, pure: which request may carry which placeholder to which host. */
import type { IncomingHttpHeaders } from 'node:http';
import { describe, expect, it } from 'vitest';
import { InjectionRegistry } from '../src/secrets/injection.js';
import {
  checkPlaceholder,
  checkPlainRequest,
  checkRequest,
  injectedRequest,
  type PlaceholderRefusalCode,
} from '../src/workers/egress-injection-check.js';

const registry = new InjectionRegistry();
const API = { hosts: ['api.example.com'], header: 'Authorization', format: 'Bearer {value}', body: false };
const BODY = { hosts: ['*.example.com:8443'], header: 'x-api-key', format: '{value}', body: true };
/** The current job's placeholders, another running job's, and one of a job that has ended. */
const api = registry.issue('t.1', 't', 'api-token', new Uint8Array(Buffer.from('sk-api-value')), API);
const body = registry.issue('t.1', 't', 'body-token', new Uint8Array(Buffer.from('sk-body-value')), BODY);
const otherJob = registry.issue('t.2', 't', 'api-token', new Uint8Array(Buffer.from('sk-other-value')), API);
const ended = registry.issue('t.0', 't', 'api-token', new Uint8Array(Buffer.from('sk-ended-value')), API);
registry.endJob('t.0');
const unknown = `fleet-ph-${'0'.repeat(40)}`;

type Row = [
  what: string,
  request: { url?: string; headers?: IncomingHttpHeaders; body?: string },
  to: string,
  expected: { swapped: string[] } | { code: PlaceholderRefusalCode; secret: string | null; reason: RegExp },
];

const rows: Row[] = [
  ['no placeholder at all', { headers: { accept: '*/*' } }, 'anywhere.net:443', { swapped: [] }],
  [
    "the bound header, in its format, to the bound host (the header's name in any case)",
    { headers: { authorization: `Bearer ${api}` } },
    'api.example.com:443',
    { swapped: ['api-token'] },
  ],
  [
    'the body, where its binding allows it, to a host its pattern matches',
    { url: '/v1/charges', body: `{"key":"${body}"}` },
    'a.example.com:8443',
    { swapped: ['body-token'] },
  ],
  [
    'a second placeholder whose binding does not cover this host refuses the whole request',
    { headers: { authorization: `Bearer ${api}`, 'x-api-key': body } },
    'api.example.com:443',
    {
      code: 'unbound-host',
      secret: 'body-token',
      reason: /^"body-token" is bound to \*\.example\.com:8443, not api\.example\.com:443$/,
    },
  ],
  [
    'a header the proxy drops is neither checked nor sent',
    { headers: { 'proxy-authorization': `Bearer ${unknown}` } },
    'api.example.com:443',
    { swapped: [] },
  ],
  [
    'the bound header to another host',
    { headers: { authorization: `Bearer ${api}` } },
    'evil.example.net:443',
    { code: 'unbound-host', secret: 'api-token', reason: /bound to api\.example\.com, not evil\.example\.net:443$/ },
  ],
  [
    'the bound header to the bound host on another port',
    { headers: { authorization: `Bearer ${api}` } },
    'api.example.com:8443',
    { code: 'unbound-host', secret: 'api-token', reason: /not api\.example\.com:8443$/ },
  ],
  [
    'the bound header in another format',
    { headers: { authorization: `Token ${api}` } },
    'api.example.com:443',
    {
      code: 'header-format',
      secret: 'api-token',
      reason: /^header authorization must be exactly "Bearer \{value\}" with the placeholder as \{value\}$/,
    },
  ],
  [
    'another header',
    { headers: { 'x-forward-to': api } },
    'api.example.com:443',
    {
      code: 'other-header',
      secret: 'api-token',
      reason: /in header x-forward-to; it may only be sent in Authorization$/,
    },
  ],
  [
    'the body, which its binding does not allow',
    { body: `token=${api}` },
    'api.example.com:443',
    { code: 'body-not-allowed', secret: 'api-token', reason: /in the request body, which its binding does not allow/ },
  ],
  [
    'the query string',
    { url: `/v1/charges?key=${api}` },
    'api.example.com:443',
    { code: 'in-url', secret: 'api-token', reason: /^a secret placeholder in the URL/ },
  ],
  [
    "another running job's placeholder",
    { headers: { authorization: `Bearer ${otherJob}` } },
    'api.example.com:443',
    { code: 'other-job', secret: 'api-token', reason: /^the placeholder of another job \(t\.2\)$/ },
  ],
  [
    "an ended job's placeholder (a replay)",
    { headers: { authorization: `Bearer ${ended}` } },
    'api.example.com:443',
    { code: 'replay', secret: 'api-token', reason: /^the placeholder of job t\.0, which has ended \(a replay\)$/ },
  ],
  [
    'a placeholder never issued',
    { headers: { authorization: `Bearer ${unknown}` } },
    'api.example.com:443',
    { code: 'unknown-placeholder', secret: null, reason: /^an unknown secret placeholder$/ },
  ],
  [
    'an allowed placeholder does not excuse a refused one: the URL is checked first, then headers, then the body',
    { url: `/?a=${body}`, headers: { authorization: `Bearer ${unknown}` } },
    'api.example.com:443',
    { code: 'in-url', secret: 'body-token', reason: /in the URL/ },
  ],
];

describe("the injecting egress proxy's check of a request (job t.1)", () => {
  it.each(rows)('%s', (_what, request, to, expected) => {
    const [host = '', port = ''] = to.split(':');
    const verdict = checkRequest(
      { url: request.url ?? '/', headers: request.headers ?? {}, body: Buffer.from(request.body ?? '') },
      { jobId: 't.1', host, port: Number(port) },
      registry,
    );
    if ('swapped' in expected) {
      expect(verdict, JSON.stringify(verdict)).toMatchObject({ ok: true });
      if (verdict.ok) expect([...verdict.swaps.values()].map((i) => i.secret)).toEqual(expected.swapped);
    } else {
      expect(verdict).toMatchObject({ ok: false, code: expected.code, secret: expected.secret });
      if (!verdict.ok) expect(verdict.reason).toMatch(expected.reason);
    }
  });

  it('one placeholder at one site, without a registry', () => {
    const target = { jobId: 't.1', host: 'api.example.com', port: 443 };
    expect(checkPlaceholder(unknown, { state: 'unknown' }, 'body', target)).toMatchObject({
      ok: false,
      code: 'unknown-placeholder',
    });
    const state = registry.lookup(api);
    expect(checkPlaceholder(api, state, { header: 'authorization', value: `Bearer ${api}` }, target)).toMatchObject({
      ok: true,
      injection: { secret: 'api-token', jobId: 't.1' },
    });
    // The job that runs now decides: the same placeholder in a later job's request is another job's.
    expect(
      checkPlaceholder(api, state, { header: 'authorization', value: `Bearer ${api}` }, { ...target, jobId: 't.3' }),
    ).toMatchObject({ ok: false, code: 'other-job', reason: 'the placeholder of another job (t.1)' });
  });

  it('refuses any placeholder in plain HTTP, naming its secret when known', () => {
    expect(checkPlainRequest({ url: 'http://api.example.com/', headers: { accept: '*/*' } }, registry)).toBeNull();
    for (const [request, secret] of [
      [{ url: `http://api.example.com/?k=${api}`, headers: {} }, 'api-token'],
      [{ url: '/', headers: { authorization: `Bearer ${ended}` } }, 'api-token'],
      [{ url: '/', headers: { 'x-anything': unknown } }, null],
    ] as const)
      expect(checkPlainRequest(request, registry)).toEqual({
        code: 'plain-http',
        secret,
        reason: 'a secret placeholder in a plain-HTTP request: injected secrets are sent only over https',
      });
  });

  it('sends the value in place of each placeholder, hop-by-hop headers dropped, asking for a whole uncompressed answer', () => {
    const headers = {
      authorization: `Bearer ${api}`,
      'content-type': 'application/json',
      'content-length': '10',
      connection: 'keep-alive',
      'accept-encoding': 'gzip',
      range: 'bytes=0-9',
      'if-range': 'x',
    };
    const swaps = new Map(registry.valuesOf('t.1').map((i) => [i.placeholder, i]));
    const sent = injectedRequest(headers, Buffer.from(`{"k":"${body}"}`), swaps);
    expect(sent.body.toString()).toBe('{"k":"sk-body-value"}');
    expect(sent.headers).toEqual({
      authorization: 'Bearer sk-api-value',
      'content-type': 'application/json',
      'content-length': sent.body.length,
      'accept-encoding': 'identity',
    });
    // Without a swap a Range request stays one, and an empty body gets no length it did not have.
    expect(injectedRequest({ range: 'bytes=0-9' }, Buffer.alloc(0), new Map()).headers).toEqual({
      range: 'bytes=0-9',
      'accept-encoding': 'identity',
    });
    // The values in the registry are untouched: the swap zeroes only its own copies.
    expect(Buffer.from(registry.valuesOf('t.1')[0]!.value).toString()).toBe('sk-api-value');
  });
});
