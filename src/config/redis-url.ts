/**
 * Redis URLs as ioredis reads them. ioredis takes host, port and credentials from WHATWG `URL`;
 * every check the fleet makes of a Redis URL (is it loopback, which addresses are the fleet's own)
 * reads the same parse, so a check and the connection cannot disagree on where a URL leads.
 */

/** `redis-cluster://host1:port1,host2:port2` names cluster seed nodes. */
export function isClusterUrl(url: string): boolean {
  return url.startsWith('redis-cluster://') || url.startsWith('rediss-cluster://');
}

/** The parts before parsing: scheme, authority (`userinfo@hosts`) and what follows it. */
const SPLIT = /^(rediss?(?:-cluster)?):\/\/([^/?#]*)(.*)$/s;

const FORMS =
  'redis://[user:password@]host[:port][/db], rediss://…, redis-cluster://[user:password@]host1:port1,host2:port2 or rediss-cluster://…';

/** Why the fleet refuses a Redis URL, and what to do instead. */
export interface RedisUrlProblem {
  reason: string;
  fix: string;
}

/**
 * Why the fleet refuses a Redis URL, or null. Refused: anything but the four forms; a fragment
 * (`#…`), and an `@` anywhere but between the userinfo and the host. Parsers disagree on those
 * (a regex taking the text after the first `@` as the host, WHATWG the last `@` before the path),
 * which would let a check judge one host while the connection goes to another. Never names the
 * URL itself (it may carry a password).
 */
export function redisUrlProblem(url: string): RedisUrlProblem | null {
  const m = SPLIT.exec(url);
  if (!m) return { reason: 'is not a Redis URL the fleet reads', fix: `write it as ${FORMS}` };
  const [, , authority = '', rest = ''] = m;
  if (url.includes('#'))
    return {
      reason: 'has a fragment (#…), which the connection ignores but other readers of the URL may not',
      fix: "remove it; write a '#' in a password as %23",
    };
  if (rest.includes('@'))
    return {
      reason:
        "has an '@' after the host (in its path or query), which readers of the URL may take for the end of a password",
      fix: 'remove it, or write it as %40',
    };
  if (authority.indexOf('@') !== authority.lastIndexOf('@'))
    return { reason: "has more than one '@' before the host", fix: "write an '@' in the user name or password as %40" };
  try {
    redisUrlNodes(url);
  } catch {
    return {
      reason: 'cannot be parsed',
      fix: `write it as ${FORMS}; check host and port, and percent-encode special characters in the password`,
    };
  }
  return null;
}

/**
 * Host and port of each node a Redis URL names (the server, or a cluster's seeds); IPv6 without
 * brackets. Parsed as ioredis parses it (WHATWG `URL`); a cluster's seeds are split before parsing,
 * each then read as a URL of its own. Throws `TypeError` for what `URL` cannot parse.
 */
export function redisUrlNodes(url: string): { host: string; port: number }[] {
  const m = SPLIT.exec(url);
  if (!m || !isClusterUrl(url)) return [nodeOf(new URL(url))];
  const [, , authority = '', rest = ''] = m;
  const at = authority.lastIndexOf('@');
  const userinfo = authority.slice(0, at + 1);
  return authority
    .slice(at + 1)
    .split(',')
    .map((seed) => nodeOf(new URL(`redis://${userinfo}${seed}${rest}`)));
}

function nodeOf(u: URL): { host: string; port: number } {
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : 6379 };
}
