import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EgressProxy, matchesEgress, type EgressRefusal } from '../src/workers/egress-proxy.js';
import { allowedAddresses, allowedByName, isNonPublic } from '../src/workers/egress-policy.js';

/** One request through the proxy, as an HTTP client configured with it would send it. */
function viaProxy(proxyUrl: string, target: string, method: 'GET' | 'CONNECT'): Promise<number> {
  const u = new URL(proxyUrl);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: u.hostname,
      port: u.port,
      method,
      path: method === 'CONNECT' ? target : `http://${target}/`,
      headers: { host: target },
    });
    req.on('connect', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode ?? 0);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

let upstream: http.Server;
let port: number;
beforeAll(async () => {
  upstream = http.createServer((_q, s) => s.end('ok'));
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
  port = (upstream.address() as net.AddressInfo).port;
});
afterAll(() => upstream.close());

describe('egress policy', () => {
  it.each([
    // [address, refused unless listed, what it is]
    ['127.0.0.1', true, 'loopback'],
    ['10.1.2.3', true, 'private'],
    ['100.64.0.1', true, 'CGNAT'],
    ['169.254.169.254', true, 'link-local: cloud metadata'],
    ['192.168.1.1', true, 'private'],
    ['198.18.0.1', true, 'benchmarking range'],
    ['0.0.0.0', true, 'unspecified'],
    ['224.0.0.1', true, 'multicast'],
    ['8.8.8.8', false, 'public IPv4'],
    ['::', true, 'unspecified'],
    ['::1', true, 'loopback'],
    ['::a9fe:a9fe', true, 'IPv4-compatible 169.254.169.254'],
    ['::ffff:127.0.0.1', true, 'IPv4-mapped loopback'],
    ['64:ff9b::a9fe:a9fe', true, 'NAT64 of 169.254.169.254'],
    ['64:ff9b:1::a00:1', true, 'local-use NAT64'],
    ['2002:a9fe:a9fe::1', true, '6to4 of 169.254.169.254'],
    ['2001:0:4136:e378::1', true, 'Teredo'],
    ['fd00::1', true, 'unique local'],
    ['fe80::1', true, 'link-local'],
    ['ff02::1', true, 'multicast'],
    ['2606:4700:4700::1111', false, 'public IPv6'],
  ])('%s: refused unless listed = %s (%s)', (address, refused) => {
    expect(isNonPublic(address)).toBe(refused);
    const verdict = allowedAddresses('any', 'api.example.com', 443, [address], new Set());
    expect(verdict.ok).toBe(!refused);
    if (!verdict.ok)
      expect(verdict.reason).toBe(`api.example.com resolves to ${address}, a loopback, link-local or private address`);
    // Listed by its address (IPv4: patterns take no IPv6 literal), it is allowed: a database on a private network.
    if (!address.includes(':'))
      expect(allowedAddresses([`${address}:443`], address, 443, [address], new Set()).ok).toBe(true);
  });

  it("refuses by name before any lookup, and the fleet's own services unless listed by address", () => {
    expect(allowedByName('none', 'a.com', 443)).toEqual({ ok: false, reason: 'egress is "none" for this job type' });
    expect(allowedByName(['b.com'], 'a.com', 443)).toEqual({ ok: false, reason: 'not in the egress list (b.com)' });
    expect(allowedByName(['a.com'], 'a.com', 443)).toEqual({ ok: true });
    const fleet = new Set(['203.0.113.7']);
    expect(allowedAddresses('any', 'vault.example.com', 443, ['203.0.113.7'], fleet)).toEqual({
      ok: false,
      reason: "203.0.113.7 is one of the fleet's own services",
    });
    // A listed name that resolves to a private address is still refused: only the address itself unlocks it.
    expect(allowedAddresses(['db.internal:5432'], 'db.internal', 5432, ['10.0.3.7'], new Set()).ok).toBe(false);
    expect(allowedAddresses('any', 'x.example.com', 443, [], new Set())).toEqual({
      ok: false,
      reason: 'DNS lookup of x.example.com returned no address',
    });
  });

  it('matches host, host:port and *.domain patterns, port 443 by default', () => {
    expect(matchesEgress('api.stripe.com', 'api.stripe.com', 443)).toBe(true);
    expect(matchesEgress('api.stripe.com', 'api.stripe.com', 80)).toBe(false);
    expect(matchesEgress('api.stripe.com', 'evil-api.stripe.com', 443)).toBe(false);
    expect(matchesEgress('*.example.com', 'a.b.example.com', 443)).toBe(true);
    expect(matchesEgress('*.example.com', 'example.com', 443)).toBe(false);
    expect(matchesEgress('*.example.com', 'badexample.com', 443)).toBe(false);
    expect(matchesEgress('*.example.com:8443', 'x.example.com', 8443)).toBe(true);
  });

  it("refuses a listed name that resolves to a fleet service's address, and allows the same address listed by address", async () => {
    const refusals: EgressRefusal[] = [];
    const byName = new EgressProxy({
      egress: [`localhost:${port}`],
      fleetAddresses: ['127.0.0.1', '::1'],
      onRefused: (r) => refusals.push(r),
    });
    const url = await byName.listen(0);
    expect(await viaProxy(url, `localhost:${port}`, 'CONNECT')).toBe(403);
    expect(await viaProxy(url, `localhost:${port}`, 'GET')).toBe(403);
    expect(refusals[0]!.reason).toMatch(/fleet's own services|loopback/);
    await byName.close();
    const byAddress = new EgressProxy({
      egress: [`127.0.0.1:${port}`],
      fleetAddresses: ['127.0.0.1'],
      onRefused: (r) => refusals.push(r),
    });
    const url2 = await byAddress.listen(0);
    expect(await viaProxy(url2, `127.0.0.1:${port}`, 'CONNECT')).toBe(200);
    expect(await viaProxy(url2, `127.0.0.1:${port}`, 'GET')).toBe(200);
    expect(byAddress.stats).toEqual({ allowed: 2, refused: 0, dropped: 0, injectionsRefused: 0 });
    await byAddress.close();
  });

  it('refuses everything with "none", unlisted hosts with a list, and private or link-local addresses with "any"', async () => {
    const refusals: EgressRefusal[] = [];
    for (const [egress, target] of [
      ['none', `127.0.0.1:${port}`],
      [['api.example.com'], 'other.example.com:443'],
      ['any', '169.254.169.254:80'],
      ['any', '10.1.2.3:443'],
      ['any', '[::1]:443'],
    ] as const) {
      const p = new EgressProxy({ egress, onRefused: (r) => refusals.push(r) });
      const url = await p.listen(0);
      expect(await viaProxy(url, target, 'CONNECT'), `${JSON.stringify(egress)} ${target}`).toBe(403);
      await p.close();
    }
    expect(refusals.map((r) => r.destination)).toEqual([
      `127.0.0.1:${port}`,
      'other.example.com:443',
      '169.254.169.254:80',
      '10.1.2.3:443',
      '::1:443',
    ]);
  });
});
