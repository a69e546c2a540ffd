/**
 * Where a sandbox may connect: the address half of the egress policy, pure (the proxy resolves
 * names and asks this). Loopback, link-local (cloud metadata), private, CGNAT, multicast and
 * unspecified addresses, and the IPv6 forms that carry an IPv4 address inside them (mapped,
 * compatible, NAT64, 6to4, Teredo), are refused unless the job type lists the address itself.
 */
import { BlockList, isIP } from 'node:net';
import { matchesEgress } from '../config/hosts.js';
import type { Egress } from './sandbox-boundary.js';

// Two lists: Node's BlockList checks an IPv4 address against IPv6 rules too (as IPv4-mapped), so
// one list holding ::ffff:0:0/96 would refuse every IPv4 address.
const NON_PUBLIC_V4 = new BlockList();
const NON_PUBLIC_V6 = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const)
  NON_PUBLIC_V4.addSubnet(net, bits, 'ipv4');
for (const [net, bits] of [
  // Unspecified and loopback, and IPv4-compatible (deprecated; ::a.b.c.d reaches a.b.c.d on some stacks).
  ['::', 96],
  ['::1', 128],
  // IPv4-mapped: ::ffff:127.0.0.1 is 127.0.0.1.
  ['::ffff:0:0', 96],
  // NAT64 (well-known and local-use prefixes): 64:ff9b::a9fe:a9fe is 169.254.169.254 behind a NAT64 gateway.
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  // Discard-only, Teredo (embeds an IPv4 server and client) and 6to4 (2002:a9fe:a9fe:: routes to 169.254.169.254).
  ['100::', 64],
  ['2001::', 32],
  ['2002::', 16],
  // Unique local, link-local, multicast.
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const)
  NON_PUBLIC_V6.addSubnet(net, bits, 'ipv6');

/** Whether an IP address is one a sandbox may reach only when its type lists that address. */
export function isNonPublic(ip: string): boolean {
  return isIP(ip) === 6 ? NON_PUBLIC_V6.check(ip, 'ipv6') : NON_PUBLIC_V4.check(ip, 'ipv4');
}

export type EgressVerdict = { ok: true; address: string } | { ok: false; reason: string };

/** The policy by name, before any DNS lookup: refused outright, or to be decided by its addresses. */
export function allowedByName(
  egress: Egress,
  host: string,
  port: number,
): { ok: true } | { ok: false; reason: string } {
  if (egress === 'none') return { ok: false, reason: 'egress is "none" for this job type' };
  if (egress !== 'any' && !egress.some((p) => matchesEgress(p, host, port)))
    return { ok: false, reason: `not in the egress list (${egress.join(', ')})` };
  return { ok: true };
}

/**
 * The verdict on the addresses `host` resolved to: every one must be public and not one of the
 * fleet's own services, unless listed by address (a listed name that resolves to a private or
 * fleet address is still refused). The first address is the one to connect to.
 */
export function allowedAddresses(
  egress: Egress,
  host: string,
  port: number,
  addresses: readonly string[],
  fleet: ReadonlySet<string>,
): EgressVerdict {
  const listedByAddress = (a: string): boolean =>
    egress !== 'any' && egress !== 'none' && egress.some((p) => matchesEgress(p, a, port));
  for (const a of addresses) {
    if (fleet.has(a) && !listedByAddress(a)) return { ok: false, reason: `${a} is one of the fleet's own services` };
    if (isNonPublic(a) && !listedByAddress(a))
      return { ok: false, reason: `${host} resolves to ${a}, a loopback, link-local or private address` };
  }
  const [address] = addresses;
  return address ? { ok: true, address } : { ok: false, reason: `DNS lookup of ${host} returned no address` };
}
