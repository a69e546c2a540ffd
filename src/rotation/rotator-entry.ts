/**
 * Runs one step of a module rotator inside a sandbox thread (empty environment, capped heap,
 * destroyed after the step). Values arrive and leave as transferred bytes; anything the rotator
 * prints is masked before it leaves.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { format } from 'node:util';
import { serializeError, type SerializedError } from '../errors.js';
import { SecretMask } from '../workers/secret-mask.js';
import { loadRotator, type Rotator, type RotatorContext } from './rotators.js';

export interface RotatorStepMessage {
  step: 'create' | 'set' | 'test' | 'finish';
  secret: string;
  current?: Uint8Array;
  value?: Uint8Array;
  retiredVersion?: string;
}
export type RotatorStepReply = { type: 'log'; msg: string } | { type: 'ready' } | { type: 'done'; ok: true; value?: Uint8Array } | { type: 'done'; ok: false; error: SerializedError };

const port = parentPort!;
const post = (m: RotatorStepReply, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);
const mask = new SecretMask();
for (const method of ['log', 'info', 'warn', 'error', 'debug'] as const) {
  console[method] = (...args: unknown[]) => post({ type: 'log', msg: mask.text(format(...args)).slice(0, 4000) });
}

const bytesView = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

async function main(): Promise<void> {
  const rotator = (await loadRotator({ type: 'module', path: (workerData as { rotatorPath: string }).rotatorPath })) as Rotator;
  port.once('message', async (msg: RotatorStepMessage) => {
    for (const v of [msg.current, msg.value]) if (v) mask.add(v);
    const ctx: RotatorContext = {
      secret: msg.secret,
      current: () => (msg.current ? Promise.resolve(bytesView(msg.current)) : Promise.reject(new Error(`secret "${msg.secret}" has no current version`))),
    };
    try {
      let out: Uint8Array | undefined;
      if (msg.step === 'create') {
        const created = await rotator.create(ctx);
        out = new Uint8Array(created.byteLength);
        out.set(created);
        created.fill(0);
      } else if (msg.step === 'set') await rotator.set?.(ctx, msg.value!);
      else if (msg.step === 'test') await rotator.test?.(ctx, msg.value!);
      else await rotator.finish?.({ ...ctx, retiredVersion: msg.retiredVersion ?? '' });
      post({ type: 'done', ok: true, ...(out ? { value: out } : {}) }, out ? [out.buffer as ArrayBuffer] : []);
    } catch (err) {
      const e = serializeError(err);
      post({ type: 'done', ok: false, error: { ...e, message: mask.text(e.message), ...(e.stack ? { stack: mask.text(e.stack) } : {}) } });
    } finally {
      msg.current?.fill(0);
      msg.value?.fill(0);
    }
  });
  post({ type: 'ready' });
}

main().catch((err: unknown) => post({ type: 'done', ok: false, error: serializeError(err) }));
