/**
 * The answer of an `exec` secret program, read from its stdout bytes without `JSON.parse`: the
 * values are decoded straight into Uint8Arrays of their own, so a secret never exists as a
 * JavaScript string (which cannot be zeroed) on the supervisor's side. Ids, error messages and
 * the protocol fields are ordinary strings; they are not secret.
 *
 * The protocol is OpenClaw's exec secret provider protocol, version 1:
 * request on stdin `{"protocolVersion":1,"provider":"<name>","ids":["<id>",…]}`, answer on stdout
 * `{"protocolVersion":1,"values":{"<id>":"<value>",…},"errors":{"<id>":{"message":"…"}}}`.
 */
import { copyBytes } from '../bytes.js';

/** A string value decoded into bytes of its own. */
export class SecretBytes {
  constructor(readonly bytes: Uint8Array) {}
}

/** A parsed document; objects are Maps, so no key (`__proto__`) is special. */
type JsonValue = null | boolean | number | string | SecretBytes | JsonValue[] | Map<string, JsonValue>;

/** What a program answered. Every `values` entry is bytes; the caller zero-fills them when done. */
export interface ExecAnswer {
  values: Map<string, Uint8Array>;
  /** Per-id errors the program reported (`errors.<id>.message`, or `""` when it gave none). */
  errors: Map<string, string>;
  /** Ids whose `values` entry is not a string (a protocol error for that id). */
  notStrings: Set<string>;
}

export class ExecResponseError extends Error {
  override name = 'ExecResponseError';
}

const MAX_DEPTH = 64;
const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

/** A recursive-descent JSON reader over bytes (RFC 8259); strings where `capture` says so become SecretBytes. */
class Reader {
  #i = 0;
  readonly #b: Uint8Array;
  /** Every value read so far, to be zeroed if the document turns out malformed. */
  readonly captured: SecretBytes[] = [];
  constructor(bytes: Uint8Array) {
    this.#b = bytes;
  }

  #fail(what: string): never {
    throw new ExecResponseError(`${what} at byte ${this.#i}`);
  }

  #ws(): void {
    while (this.#i < this.#b.length && WS.has(this.#b[this.#i] ?? 0)) this.#i++;
  }

  atEnd(): boolean {
    this.#ws();
    return this.#i >= this.#b.length;
  }

  /** `capture(path)`: whether a string at this path is a secret value (read into bytes). */
  value(path: readonly string[], capture: (path: readonly string[]) => boolean): JsonValue {
    if (path.length > MAX_DEPTH) this.#fail(`nested deeper than ${MAX_DEPTH}`);
    this.#ws();
    const c = this.#b[this.#i];
    if (c === 0x7b) return this.#object(path, capture);
    if (c === 0x5b) return this.#array(path, capture);
    if (c === 0x22) {
      const bytes = this.#string();
      if (capture(path)) {
        const v = new SecretBytes(bytes);
        this.captured.push(v);
        return v;
      }
      const s = Buffer.from(bytes).toString('utf8');
      bytes.fill(0);
      return s;
    }
    if (this.#literal('true')) return true;
    if (this.#literal('false')) return false;
    if (this.#literal('null')) return null;
    if (c === 0x2d || (c !== undefined && c >= 0x30 && c <= 0x39)) return this.#number();
    return this.#fail(c === undefined ? 'unexpected end' : 'unexpected character');
  }

  #literal(word: string): boolean {
    for (let k = 0; k < word.length; k++) if (this.#b[this.#i + k] !== word.charCodeAt(k)) return false;
    this.#i += word.length;
    return true;
  }

  #number(): number {
    const start = this.#i;
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(
      Buffer.from(this.#b.subarray(start, Math.min(this.#b.length, start + 400))).toString('latin1'),
    );
    if (!m) this.#fail('bad number');
    this.#i += m[0].length;
    return Number(m[0]);
  }

  #object(path: readonly string[], capture: (path: readonly string[]) => boolean): JsonValue {
    this.#i++;
    const out = new Map<string, JsonValue>();
    this.#ws();
    if (this.#b[this.#i] === 0x7d) {
      this.#i++;
      return out;
    }
    for (;;) {
      this.#ws();
      if (this.#b[this.#i] !== 0x22) this.#fail('expected a key');
      const keyBytes = this.#string();
      const key = Buffer.from(keyBytes).toString('utf8');
      this.#ws();
      if (this.#b[this.#i] !== 0x3a) this.#fail('expected ":"');
      this.#i++;
      const v = this.value([...path, key], capture);
      // A repeated key: the last wins, as with JSON.parse; a value it replaces is zeroed.
      const prev = out.get(key);
      if (prev instanceof SecretBytes) prev.bytes.fill(0);
      out.set(key, v);
      this.#ws();
      const c = this.#b[this.#i++];
      if (c === 0x7d) return out;
      if (c !== 0x2c) this.#fail('expected "," or "}"');
    }
  }

  #array(path: readonly string[], capture: (path: readonly string[]) => boolean): JsonValue {
    this.#i++;
    const out: JsonValue[] = [];
    this.#ws();
    if (this.#b[this.#i] === 0x5d) {
      this.#i++;
      return out;
    }
    for (;;) {
      out.push(this.value([...path, String(out.length)], capture));
      this.#ws();
      const c = this.#b[this.#i++];
      if (c === 0x5d) return out;
      if (c !== 0x2c) this.#fail('expected "," or "]"');
    }
  }

  #hex4(at: number): number {
    let n = 0;
    for (let k = 0; k < 4; k++) {
      const c = this.#b[at + k] ?? 0;
      const d =
        c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1;
      if (d < 0) this.#fail('bad \\u escape');
      n = n * 16 + d;
    }
    return n;
  }

  /** A string's content as UTF-8 bytes of their own (escapes resolved; a lone surrogate becomes U+FFFD, as Buffer.from does). */
  #string(): Uint8Array {
    this.#i++;
    let end = this.#i;
    while (end < this.#b.length && this.#b[end] !== 0x22) end += this.#b[end] === 0x5c ? 2 : 1;
    if (end >= this.#b.length) this.#fail('unterminated string');
    // Escapes only shrink: the raw span bounds the decoded length.
    const scratch = new Uint8Array(end - this.#i);
    let n = 0;
    const put = (cp: number): void => {
      if (cp < 0x80) scratch[n++] = cp;
      else if (cp < 0x800) {
        scratch[n++] = 0xc0 | (cp >> 6);
        scratch[n++] = 0x80 | (cp & 0x3f);
      } else if (cp < 0x10000) {
        scratch[n++] = 0xe0 | (cp >> 12);
        scratch[n++] = 0x80 | ((cp >> 6) & 0x3f);
        scratch[n++] = 0x80 | (cp & 0x3f);
      } else {
        scratch[n++] = 0xf0 | (cp >> 18);
        scratch[n++] = 0x80 | ((cp >> 12) & 0x3f);
        scratch[n++] = 0x80 | ((cp >> 6) & 0x3f);
        scratch[n++] = 0x80 | (cp & 0x3f);
      }
    };
    try {
      while (this.#i < end) {
        const c = this.#b[this.#i] ?? 0;
        if (c < 0x20) this.#fail('control character in a string');
        if (c !== 0x5c) {
          scratch[n++] = c;
          this.#i++;
          continue;
        }
        const e = this.#b[this.#i + 1];
        this.#i += 2;
        const simple: Record<number, number> = {
          0x22: 0x22,
          0x5c: 0x5c,
          0x2f: 0x2f,
          0x62: 8,
          0x66: 12,
          0x6e: 10,
          0x72: 13,
          0x74: 9,
        };
        if (e !== undefined && e in simple) {
          scratch[n++] = simple[e] ?? 0;
          continue;
        }
        if (e !== 0x75) this.#fail('bad escape');
        if (this.#i + 4 > end) this.#fail('bad \\u escape');
        let cp = this.#hex4(this.#i);
        this.#i += 4;
        if (
          cp >= 0xd800 &&
          cp <= 0xdbff &&
          this.#b[this.#i] === 0x5c &&
          this.#b[this.#i + 1] === 0x75 &&
          this.#i + 6 <= end
        ) {
          const lo = this.#hex4(this.#i + 2);
          if (lo >= 0xdc00 && lo <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            this.#i += 6;
          }
        }
        put(cp >= 0xd800 && cp <= 0xdfff ? 0xfffd : cp);
      }
      this.#i = end + 1;
      return copyBytes(scratch.subarray(0, n));
    } finally {
      scratch.fill(0);
    }
  }
}

function isRecord(v: JsonValue | undefined): v is Map<string, JsonValue> {
  return v instanceof Map;
}

/** Zero-fills every SecretBytes inside `v`. */
function wipe(v: JsonValue | undefined): void {
  if (v instanceof SecretBytes) v.bytes.fill(0);
  else if (Array.isArray(v)) v.forEach(wipe);
  else if (v instanceof Map) v.forEach(wipe);
}

/** `bytes` without leading and trailing ASCII whitespace (a view, not a copy). */
export function trimmed(bytes: Uint8Array): Uint8Array {
  let a = 0;
  let b = bytes.length;
  while (a < b && WS.has(bytes[a] ?? 0)) a++;
  while (b > a && WS.has(bytes[b - 1] ?? 0)) b--;
  return bytes.subarray(a, b);
}

/**
 * Reads a program's stdout. `jsonOnly: false` with exactly one id also takes plain output (OpenClaw's
 * rule, for `op read`, `sops -d --extract`, `pass show`): the trimmed bytes, or the content of a
 * JSON string, are the value, unless the output is a JSON object with a `protocolVersion` (then it
 * is read as the protocol). Values for ids not asked for are zeroed and dropped. Throws
 * {@link ExecResponseError} for anything that is not a well-formed answer.
 */
export function parseExecAnswer(stdout: Uint8Array, ids: readonly string[], jsonOnly: boolean): ExecAnswer {
  const body = trimmed(stdout);
  if (!body.length) throw new ExecResponseError('the program printed nothing on stdout');
  const plain = !jsonOnly && ids.length === 1;
  const asked = new Set(ids);
  let doc: JsonValue;
  const r = new Reader(body);
  try {
    doc = r.value([], (p) => (p.length === 2 && p[0] === 'values') || (plain && p.length === 0));
    if (!r.atEnd()) throw new ExecResponseError('trailing data after the JSON document');
  } catch (err) {
    for (const v of r.captured) v.bytes.fill(0);
    if (!plain)
      throw err instanceof ExecResponseError ? new ExecResponseError(`stdout is not JSON: ${err.message}`) : err;
    doc = null;
  }
  const only = ids[0] ?? '';
  if (plain && !(isRecord(doc) && doc.has('protocolVersion'))) {
    if (doc instanceof SecretBytes)
      return { values: new Map([[only, doc.bytes]]), errors: new Map(), notStrings: new Set() };
    wipe(doc);
    return { values: new Map([[only, copyBytes(body)]]), errors: new Map(), notStrings: new Set() };
  }
  if (!isRecord(doc)) {
    wipe(doc);
    throw new ExecResponseError('the answer must be a JSON object');
  }
  const version = doc.get('protocolVersion');
  if (version !== 1) {
    wipe(doc);
    throw new ExecResponseError(
      // A number is shown; a string is not (a program that prints a value there must not see it in a log).
      `protocolVersion must be 1, got ${typeof version === 'number' ? String(version).slice(0, 20) : version === undefined ? 'none' : `a ${typeof version === 'string' ? 'string' : 'non-number'}`}`,
    );
  }
  const values = doc.get('values');
  if (!isRecord(values)) {
    wipe(doc);
    throw new ExecResponseError('the answer has no "values" object');
  }
  const out: ExecAnswer = { values: new Map(), errors: new Map(), notStrings: new Set() };
  const errs = doc.get('errors');
  for (const [id, entry] of isRecord(errs) ? errs : []) {
    if (!asked.has(id)) continue;
    const message = isRecord(entry) ? entry.get('message') : undefined;
    out.errors.set(id, typeof message === 'string' ? message.trim() : '');
  }
  for (const [id, v] of values) {
    if (!asked.has(id) || out.errors.has(id)) wipe(v);
    else if (v instanceof SecretBytes) out.values.set(id, v.bytes);
    else out.notStrings.add(id);
  }
  return out;
}
