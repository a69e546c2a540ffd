/**
 * A process sandbox's end of its channel: the frames of channel.ts on descriptor 3, read and
 * written with `node:fs` alone. A `job` sandbox starts once per job, and `node:net` with the
 * streams it brings cost each start ~3 ms of CPU to load and more to run (docs/benchmarks.md);
 * `node:fs` is part of Node's own start-up.
 *
 * - **Reads.** Descriptor 3 is the child's end of a socket pair, which libuv leaves blocking. The
 *   first frame (the init message, sent as the process starts) is read synchronously: nothing can
 *   run before it. After that one `fs.read` at a time waits for the supervisor in libuv's thread
 *   pool, where it holds one of the pool's threads (4 unless `UV_THREADPOOL_SIZE` says otherwise)
 *   for the sandbox's life.
 * - **Writes.** `fs.writeSync`, as Node writes `process.stdout` to a pipe on Linux: a frame has
 *   left when `send` returns, and one holding secret bytes is zero-filled then. A full socket
 *   buffer waits for the supervisor, which reads without pause.
 * - **Exit.** libuv joins its pool's threads when a process exits, so a read waiting for the
 *   supervisor would hold `process.exit()` forever. Every `process.exit()` ends in
 *   `process.reallyExit`, which first sends the exit notice (channel.ts); the supervisor closes its
 *   end on it, the read returns, and the process exits with its own code.
 * - **Many jobs.** Through the pool every message costs two more thread wake-ups than a socket
 *   read by the event loop (+40 µs of a pool sandbox's ~110 µs per job here), which over a few
 *   dozen jobs is more than loading `node:net` once. A sandbox that runs more than one job
 *   (`isolation: "pool"`) calls {@link FdChannel.toSocket} at its second: from the next read on,
 *   the channel is a `net.Socket` on the same descriptor, as it was before this module.
 *
 * What this side sends is checked by the supervisor like any other sandbox's bytes: nothing here is
 * trusted there, and a processor that writes to descriptor 3 itself gains nothing.
 */
import type { Socket } from 'node:net';
import { encodeFrame, EXIT_NOTICE, FrameDecoder } from './channel.js';

/** Bytes asked for per read (what libuv reads per socket callback too). */
const READ_BYTES = 64 * 1024;

export interface FdChannel {
  /** Writes one message; dropped once the channel is closed. */
  send(msg: object): void;
  /** Delivers every message after the first (in order) to `onMessage`. */
  listen(onMessage: (msg: unknown) => void): void;
  /** Moves reading and writing onto a `net.Socket` on the descriptor once the read in progress has returned. */
  toSocket(): void;
  /** Calls `then` once everything sent has left (at once, but for a socket's queued writes). */
  end(then: () => void): void;
}

/**
 * Opens the channel on `fd`: reads (blocking) until its first message has arrived and returns it.
 * `onClosed` runs once when the supervisor closed its end or the descriptor failed.
 */
export function openFdChannel(
  fd: number,
  maxFrameBytes: number,
  onClosed: () => void,
): { first: unknown; channel: FdChannel } {
  const fs = process.getBuiltinModule('node:fs');
  const decoder = new FrameDecoder(maxFrameBytes);
  // Its own memory (not Node's shared pool): it holds the supervisor's frames, secret values among them.
  let buffer = Buffer.allocUnsafeSlow(READ_BYTES);
  let closed = false;
  /** Whether a read waits in the thread pool (and so holds the process's exit). */
  let reading = false;
  /** Set by toSocket(): the next read is the socket's. */
  let wantSocket = false;
  let socket: Socket | null = null;
  const close = (): void => {
    if (closed) return;
    closed = true;
    decoder.discard();
    onClosed();
  };
  /** The messages completed by the `n` bytes just read into `buffer`. */
  const decode = (n: number): unknown[] => {
    const messages = decoder.push(buffer.subarray(0, n));
    // The decoder zero-fills what it consumed and keeps an incomplete frame's bytes as they are:
    // a new buffer for the next read, then, rather than a copy of every chunk.
    if (decoder.buffered > 0) buffer = Buffer.allocUnsafeSlow(READ_BYTES);
    return messages;
  };
  const write = (bytes: Buffer): void => {
    for (let at = 0; at < bytes.length;) at += fs.writeSync(fd, bytes, at, bytes.length - at);
  };

  const early: unknown[] = [];
  while (!early.length) {
    const n = fs.readSync(fd, buffer, 0, buffer.length, null);
    if (n === 0) {
      close();
      const none = (): void => undefined;
      return { first: null, channel: { send: none, listen: none, toSocket: none, end: (then) => then() } };
    }
    early.push(...decode(n));
  }
  const first = early.shift();

  const exitNotice = encodeFrame(EXIT_NOTICE).bytes;
  const reallyExit: unknown = Reflect.get(process, 'reallyExit');
  if (typeof reallyExit === 'function')
    Reflect.set(process, 'reallyExit', (code?: number): unknown => {
      if (reading && !closed)
        try {
          write(exitNotice);
        } catch {
          // The supervisor is gone: the read has returned, or is about to.
        }
      return Reflect.apply(reallyExit, process, [code]);
    });

  /** The socket that carries the channel from here on, fed to the same decoder. */
  const openSocket = (onMessage: (msg: unknown) => void): void => {
    const s = new (process.getBuiltinModule('node:net').Socket)({ fd, readable: true, writable: true });
    socket = s;
    s.on('data', (chunk: Buffer) => {
      for (const m of decoder.push(chunk)) onMessage(m);
    });
    s.on('end', close);
    s.on('error', close);
  };

  const channel: FdChannel = {
    send(msg) {
      if (closed) return;
      const frame = encodeFrame(msg);
      if (socket) {
        if (socket.destroyed) return;
        if (frame.secret) socket.write(frame.bytes, () => frame.wipe());
        else socket.write(frame.bytes);
        return;
      }
      try {
        write(frame.bytes);
      } catch {
        // EPIPE: the supervisor closed the channel. Ended as a read that returns nothing ends it.
        process.nextTick(close);
      } finally {
        frame.wipe();
      }
    },
    listen(onMessage) {
      const readNext = (): void => {
        if (closed) return;
        if (wantSocket) {
          openSocket(onMessage);
          return;
        }
        reading = true;
        // Through the module object at each call, not a copy of the function taken at start.
        fs.read(fd, buffer, 0, buffer.length, null, (err, n) => {
          reading = false;
          if (err || n === 0) {
            close();
            return;
          }
          try {
            for (const m of decode(n)) onMessage(m);
          } finally {
            readNext();
          }
        });
      };
      for (const m of early.splice(0)) onMessage(m);
      readNext();
    },
    toSocket() {
      wantSocket = true;
    },
    end(then) {
      if (socket && !socket.destroyed) socket.end(then);
      else then();
    },
  };
  return { first, channel };
}
