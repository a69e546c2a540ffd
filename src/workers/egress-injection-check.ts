/**
 * Which request may carry which secret placeholder to which host, pure: the injecting egress proxy
 * reads a request and asks this, then sends what {@link injectedRequest} makes of it. A placeholder
 * is swapped for its value only when it belongs to the sandbox's current job and sits where its
 * secret's binding allows (a bound host, its header in its format, the body if allowed) and nowhere
 * else; any other placeholder in the request refuses the whole request, naming why.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import {
  bindingAllows,
  PLACEHOLDER,
  type Injection,
  type InjectionRegistry,
  type PlaceholderState,
} from '../secrets/injection.js';
import { HOP_BY_HOP, replaceBytes } from './egress-http.js';

/** Where in a request a placeholder was found. */
export type PlaceholderSite = { header: string; value: string } | 'body' | 'url';

/** Why a placeholder may not be sent (the refusal's `reason` says it in words). */
export type PlaceholderRefusalCode =
  | 'unknown-placeholder'
  | 'replay'
  | 'other-job'
  | 'in-url'
  | 'unbound-host'
  | 'body-not-allowed'
  | 'other-header'
  | 'header-format'
  | 'plain-http';

/** A placeholder refused: the secret it stands for, when known, and why. */
export interface PlaceholderRefusal {
  code: PlaceholderRefusalCode;
  secret: string | null;
  reason: string;
}

/** A verdict that refuses. */
export type Refused = { ok: false } & PlaceholderRefusal;

/** The request being checked: for the job the sandbox runs now, to `host:port`. */
export interface InjectionTarget {
  jobId: string | null;
  host: string;
  port: number;
}

/** The verdict on one placeholder at one site of a request. */
export function checkPlaceholder(
  placeholder: string,
  state: PlaceholderState,
  site: PlaceholderSite,
  target: InjectionTarget,
): { ok: true; injection: Injection } | Refused {
  const refusal = (code: PlaceholderRefusalCode, secret: string | null, reason: string): Refused => ({
    ok: false,
    code,
    secret,
    reason,
  });
  if (state.state === 'unknown') return refusal('unknown-placeholder', null, 'an unknown secret placeholder');
  if (state.state === 'retired')
    return refusal('replay', state.secret, `the placeholder of job ${state.jobId}, which has ended (a replay)`);
  const inj = state.injection;
  if (inj.jobId !== target.jobId)
    return refusal('other-job', inj.secret, `the placeholder of another job (${inj.jobId})`);
  if (site === 'url')
    return refusal('in-url', inj.secret, 'a secret placeholder in the URL (paths and query strings end up in logs)');
  if (!bindingAllows(inj.binding, target.host, target.port))
    return refusal(
      'unbound-host',
      inj.secret,
      `"${inj.secret}" is bound to ${inj.binding.hosts.join(', ')}, not ${target.host}:${target.port}`,
    );
  if (site === 'body') {
    if (!inj.binding.body)
      return refusal(
        'body-not-allowed',
        inj.secret,
        `a placeholder of "${inj.secret}" in the request body, which its binding does not allow (body: true)`,
      );
  } else {
    if (site.header !== inj.binding.header.toLowerCase())
      return refusal(
        'other-header',
        inj.secret,
        `a placeholder of "${inj.secret}" in header ${site.header}; it may only be sent in ${inj.binding.header}`,
      );
    if (site.value !== inj.binding.format.replace('{value}', placeholder))
      return refusal(
        'header-format',
        inj.secret,
        `header ${site.header} must be exactly "${inj.binding.format}" with the placeholder as {value}`,
      );
  }
  return { ok: true, injection: inj };
}

/**
 * The verdict on a request read from a terminated TLS connection: every placeholder in its URL,
 * headers (but those the proxy drops) and body must pass {@link checkPlaceholder}; the first that
 * does not refuses the request. Otherwise the injections to swap in, by placeholder.
 */
export function checkRequest(
  request: { url: string; headers: IncomingHttpHeaders; body: Buffer },
  target: InjectionTarget,
  registry: Pick<InjectionRegistry, 'lookup'>,
): { ok: true; swaps: Map<string, Injection> } | Refused {
  const sites: [string, PlaceholderSite][] = [...request.url.matchAll(PLACEHOLDER)].map((m) => [m[0], 'url']);
  for (const [name, raw] of Object.entries(request.headers)) {
    if (HOP_BY_HOP.includes(name) || raw === undefined) continue;
    for (const value of Array.isArray(raw) ? raw : [raw])
      for (const m of value.matchAll(PLACEHOLDER)) sites.push([m[0], { header: name, value }]);
  }
  for (const m of request.body.toString('latin1').matchAll(PLACEHOLDER)) sites.push([m[0], 'body']);
  const swaps = new Map<string, Injection>();
  for (const [placeholder, site] of sites) {
    const verdict = checkPlaceholder(placeholder, registry.lookup(placeholder), site, target);
    if (!verdict.ok) return verdict;
    swaps.set(placeholder, verdict.injection);
  }
  return { ok: true, swaps };
}

/**
 * Injected secrets travel only over TLS: the refusal of a plain-HTTP request (absolute-form, or
 * origin-form inside a tunnel) with a placeholder in its URL or headers, or null without one.
 */
export function checkPlainRequest(
  request: { url: string; headers: IncomingHttpHeaders },
  registry: Pick<InjectionRegistry, 'lookup'>,
): PlaceholderRefusal | null {
  const [found] = [...`${request.url}\n${JSON.stringify(request.headers)}`.matchAll(PLACEHOLDER)].map((m) => m[0]);
  if (found === undefined) return null;
  const s = registry.lookup(found);
  return {
    code: 'plain-http',
    secret: s.state === 'active' ? s.injection.secret : s.state === 'retired' ? s.secret : null,
    reason: 'a secret placeholder in a plain-HTTP request: injected secrets are sent only over https',
  };
}

/**
 * The request as sent upstream: hop-by-hop headers dropped, each placeholder swapped for its value
 * (headers and body), and asked for a whole, uncompressed answer, since responses are searched for
 * the values (a Range request would bring back a slice the whole-value mask does not recognise).
 */
export function injectedRequest(
  headers: IncomingHttpHeaders,
  body: Buffer,
  swaps: ReadonlyMap<string, Injection>,
): { headers: OutgoingHttpHeaders; body: Buffer } {
  const out: OutgoingHttpHeaders = {};
  for (const [name, raw] of Object.entries(headers))
    if (!HOP_BY_HOP.includes(name) && raw !== undefined) out[name] = raw;
  let sent = body;
  for (const [ph, inj] of swaps) {
    const value = Buffer.from(inj.value);
    for (const [name, raw] of Object.entries(out)) {
      if (typeof raw === 'string' && raw.includes(ph)) out[name] = raw.split(ph).join(value.toString('latin1'));
    }
    sent = replaceBytes(sent, Buffer.from(ph), value);
    value.fill(0);
  }
  if (sent.length || headers['content-length'] !== undefined || headers['transfer-encoding'] !== undefined)
    out['content-length'] = sent.length;
  out['accept-encoding'] = 'identity';
  if (swaps.size) {
    delete out.range;
    delete out['if-range'];
  }
  return { headers: out, body: sent };
}
