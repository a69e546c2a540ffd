import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EgressProxy, matchesEgress, type EgressRefusal } from '../src/workers/egress-proxy.js';

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
