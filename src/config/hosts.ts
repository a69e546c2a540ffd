/** Host patterns shared by egress policies and secret bindings: `host`, `host:port`, `*.domain[:port]` (port 443 by default). */
import { BlockList, isIPv4, isIPv6 } from 'node:net';

/** `host:port` split, with IPv6 brackets removed. */
export function splitHostPort(target: string, defaultPort: number): { host: string; port: number } | null {
  const [, host, portText] = /^\[([^\]]+)\](?::(\d+))?$/.exec(target) ?? /^([^:]+)(?::(\d+))?$/.exec(target) ?? [];
  if (host === undefined) return null;
  const port = portText ? Number(portText) : defaultPort;
  if (!Number.isInteger(port) || port < 1 || port > 65535) return null;
  return { host: host.toLowerCase().replace(/\.$/, ''), port };
}

/** Whether `host:port` matches one pattern (`host`, `host:port`, `*.domain`, `*.domain:port`; port defaults to 443). */
export function matchesEgress(pattern: string, host: string, port: number): boolean {
  const p = splitHostPort(pattern.toLowerCase(), 443);
  if (!p || p.port !== port) return false;
  if (p.host.startsWith('*.')) return host.endsWith(p.host.slice(1)) && host.length > p.host.length - 1;
  return host === p.host;
}

/** Whether every destination `pattern` names is also allowed by one of `allowed` (same wildcard, or a wildcard covering it). */
export function patternCovered(pattern: string, allowed: readonly string[]): boolean {
  const p = splitHostPort(pattern.toLowerCase(), 443);
  if (!p) return false;
  return allowed.some((a) => {
    const q = splitHostPort(a.toLowerCase(), 443);
    if (!q || q.port !== p.port) return false;
    if (q.host === p.host) return true;
    return q.host.startsWith('*.') && p.host.endsWith(q.host.slice(1));
  });
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');
LOOPBACK.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');

/**
 * Whether a host (as written in a URL; IPv6 with or without brackets) names this machine's
 * loopback: `localhost`, 127.0.0.0/8, `::1`. Decided on the text alone, never by a lookup: any other
 * name may resolve elsewhere on another host, and 0.0.0.0 is every interface, not loopback.
 */
export function isLoopbackHost(host: string): boolean {
  const h = host
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1')
    .replace(/\.$/, '');
  if (h === 'localhost') return true;
  const family = isIPv4(h) ? 'ipv4' : isIPv6(h) ? 'ipv6' : null;
  return family !== null && LOOPBACK.check(h, family);
}
