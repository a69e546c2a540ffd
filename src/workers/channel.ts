/**
 * The wire between a supervisor and a process sandbox: a socket pair of our own (the child's fd 3),
 * carrying length-prefixed frames and nothing else. Node's IPC channel is not used: it also carries
 * Node's internal messages, and its framing lets a peer announce gigabytes the reader then buffers.
 *
 * A frame is `[u32 BE: body length][u32 BE: JSON length][JSON, UTF-8][bytes…]`. Byte values
 * (secret values, a rotator's created value) never become strings, which cannot be zeroed: each
 * `Uint8Array` in a message travels after the JSON, and the JSON holds `{"$bytes": [offset,
 * length]}` in its place. The reader refuses a frame whose announced length is above its cap
 * before buffering a byte of it, and the encoder and decoder zero-fill every buffer that held bytes.
 *
 * Pure: no sockets here, so the codec is unit-tested and fuzzed on its own.
 */

/**
 * The variable that tells a sandbox entry it is a process whose channel is fd 3 (a thread has no
 * such variable in its environment, and gets its port from `worker_threads`).
 */
export const CHANNEL_ENV = 'FLEET_SANDBOX_CHANNEL';
export const CHANNEL_FD3 = 'fd3';

/**
 * What a process sandbox sends as its last frame when it exits while a read of its channel waits
 * (fd-channel.ts): the supervisor closes its end on it, which lets the sandbox's process end. Not a
 * protocol message: the host consumes it, and a sandbox that sends it and lives on is killed.
 */
export const EXIT_NOTICE = { type: 'exiting' } as const;

/** Whether a decoded frame is the {@link EXIT_NOTICE}. */
export function isExitNotice(msg: unknown): boolean {
  return typeof msg === 'object' && msg !== null && Reflect.get(msg, 'type') === EXIT_NOTICE.type;
}

/** Why the reader refused what its peer sent (a sandbox's protocol violation). */
export class ChannelError extends Error {
  override name = 'ChannelError';
}

const HEADER_BYTES = 8;
/** Largest frame this side ever sends (a run message with its payload). */
export const MAX_OUTGOING_FRAME_BYTES = 512 * 1024 * 1024;

function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array;
}

/**
 * One frame holding `msg`. The caller writes it and, once written, zero-fills it
 * ({@link Frame.wipe}): it may hold copies of secret values.
 */
export interface Frame {
  bytes: Buffer;
  /** Zero-fills the frame (it may hold secret bytes); call once it has been written. */
  wipe(): void;
  /** Whether it holds bytes to zero (`wipe` is a no-op otherwise, and no write callback is needed). */
  secret: boolean;
}

/**
 * Whether a message carries bytes where the protocol puts them: a top-level field, or a field of
 * an object in a top-level array (`run.secrets[].value`). Most messages carry none and take the
 * fast path (no replacer, no private buffer to zero).
 */
function carriesBytes(msg: object): boolean {
  for (const v of Object.values(msg)) {
    if (isBytes(v)) return true;
    if (Array.isArray(v))
      for (const item of v)
        if (typeof item === 'object' && item !== null && Object.values(item).some(isBytes)) return true;
  }
  return false;
}

const noWipe = (): void => undefined;

export function encodeFrame(msg: object): Frame {
  if (!carriesBytes(msg)) {
    const json = JSON.stringify(msg);
    const jsonBytes = Buffer.byteLength(json);
    if (jsonBytes + HEADER_BYTES > MAX_OUTGOING_FRAME_BYTES)
      throw new ChannelError(
        `a message of ${jsonBytes} bytes is above the channel's ${MAX_OUTGOING_FRAME_BYTES}-byte limit`,
      );
    // Nothing secret in it: Node's pooled allocation is fine, and nothing needs zeroing.
    const out = Buffer.allocUnsafe(HEADER_BYTES + jsonBytes);
    out.writeUInt32BE(4 + jsonBytes, 0);
    out.writeUInt32BE(jsonBytes, 4);
    out.write(json, HEADER_BYTES, 'utf8');
    return { bytes: out, wipe: noWipe, secret: false };
  }
  const parts: Uint8Array[] = [];
  let attached = 0;
  const json = JSON.stringify(msg, function replacer(this: unknown, key: string, value: unknown): unknown {
    // `value` is after toJSON (a Buffer arrives as {type, data}): read the holder's own field.
    const raw: unknown = key === '' ? value : Reflect.get(Object(this), key);
    if (isBytes(raw)) {
      const at: [number, number] = [attached, raw.byteLength];
      parts.push(raw);
      attached += raw.byteLength;
      return { $bytes: at };
    }
    return value;
  });
  const jsonBytes = Buffer.byteLength(json);
  const body = 4 + jsonBytes + attached;
  if (body + 4 > MAX_OUTGOING_FRAME_BYTES)
    throw new ChannelError(`a message of ${body} bytes is above the channel's ${MAX_OUTGOING_FRAME_BYTES}-byte limit`);
  // Its own memory, not Node's shared pool: the frame may hold secret bytes and is zeroed after use.
  const out = Buffer.allocUnsafeSlow(4 + body);
  out.writeUInt32BE(body, 0);
  out.writeUInt32BE(jsonBytes, 4);
  out.write(json, HEADER_BYTES, 'utf8');
  let at = HEADER_BYTES + jsonBytes;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return { bytes: out, wipe: () => out.fill(0), secret: true };
}

/**
 * Reassembles frames from a byte stream. `push` returns the messages completed by a chunk and
 * throws {@link ChannelError} on anything that is not a well-formed frame: a length above
 * `maxFrameBytes` (refused from its header alone), a JSON length that does not fit, text that is
 * not JSON or not an object, a byte reference outside the frame. After a throw the decoder is
 * unusable (the stream is out of step): the caller closes the channel.
 */
export class FrameDecoder {
  readonly #max: number;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #need = -1;
  #broken: ChannelError | null = null;

  constructor(maxFrameBytes: number) {
    this.#max = maxFrameBytes;
  }

  /** Bytes held for an incomplete frame (at most the cap plus one read). */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): unknown[] {
    if (this.#broken) throw this.#broken;
    // Chunks are held until their frames are complete, and zeroed as they are consumed (they may
    // hold secret bytes): the caller hands them over.
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const out: unknown[] = [];
    try {
      for (;;) {
        if (this.#need < 0) {
          if (this.#buffered < 4) break;
          const head = this.#take(4);
          const body = head.readUInt32BE(0);
          if (body > this.#max)
            throw new ChannelError(`a frame announced ${body} bytes, above this channel's limit of ${this.#max}`);
          if (body < 4) throw new ChannelError(`a frame announced ${body} bytes, too short to hold its JSON length`);
          this.#need = body;
        }
        if (this.#buffered < this.#need) break;
        const frame = this.#take(this.#need);
        this.#need = -1;
        try {
          out.push(decodeBody(frame));
        } finally {
          frame.fill(0);
        }
      }
    } catch (err) {
      this.#broken = err instanceof ChannelError ? err : new ChannelError(String(err));
      this.discard();
      throw this.#broken;
    }
    return out;
  }

  /** Zero-fills and drops whatever is buffered (the channel closed or broke). */
  discard(): void {
    for (const c of this.#chunks) c.fill(0);
    this.#chunks = [];
    this.#buffered = 0;
  }

  /** The first `n` buffered bytes, removed from the buffer (the consumed chunks zeroed). */
  #take(n: number): Buffer {
    const first = this.#chunks[0];
    if (first && first.length >= n) {
      // Within one chunk (the usual case): a copy of that slice, the slice zeroed.
      const out = Buffer.allocUnsafe(n);
      first.copy(out, 0, 0, n);
      first.fill(0, 0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      this.#buffered -= n;
      return out;
    }
    const out = Buffer.allocUnsafeSlow(n);
    let filled = 0;
    while (filled < n) {
      const c = this.#chunks[0];
      if (!c) throw new ChannelError('internal: frame shorter than announced');
      const used = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, used);
      filled += used;
      if (used === c.length) {
        c.fill(0);
        this.#chunks.shift();
      } else {
        c.fill(0, 0, used);
        this.#chunks[0] = c.subarray(used);
      }
    }
    this.#buffered -= n;
    return out;
  }
}

function decodeBody(frame: Buffer): object {
  const jsonBytes = frame.readUInt32BE(0);
  if (jsonBytes > frame.length - 4)
    throw new ChannelError(`a frame's JSON length (${jsonBytes}) runs past its end (${frame.length - 4})`);
  const bytesStart = 4 + jsonBytes;
  const bytesLength = frame.length - bytesStart;
  let parsed: unknown;
  const text = frame.toString('utf8', 4, bytesStart);
  try {
    parsed =
      !bytesLength && !text.includes('"$bytes"')
        ? JSON.parse(text)
        : JSON.parse(text, (_key, value: unknown) => {
            if (typeof value === 'object' && value !== null && '$bytes' in value) {
              const ref: unknown = Reflect.get(value, '$bytes');
              if (
                !Array.isArray(ref) ||
                ref.length !== 2 ||
                !ref.every((n) => Number.isSafeInteger(n) && Number(n) >= 0) ||
                Number(ref[0]) + Number(ref[1]) > bytesLength
              )
                throw new ChannelError(
                  `a byte reference ${JSON.stringify(ref)} outside the frame's ${bytesLength} bytes`,
                );
              const start = bytesStart + Number(ref[0]);
              // A copy of its own (the frame is zeroed after decoding).
              return new Uint8Array(frame.subarray(start, start + Number(ref[1])));
            }
            return value;
          });
  } catch (err) {
    if (err instanceof ChannelError) throw err;
    throw new ChannelError(`a frame that is not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new ChannelError('a frame whose JSON is not an object');
  return parsed;
}
