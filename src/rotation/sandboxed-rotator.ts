import { Worker } from 'node:worker_threads';
import { deserializeError, TimeoutError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { compiledPath } from '../runtime-path.js';
import type { RotatorStepMessage, RotatorStepReply } from './rotator-entry.js';

const ENTRY = compiledPath(import.meta.url, './rotator-entry.js');

/**
 * Runs one rotator step in a fresh sandbox thread that is destroyed afterwards. Values in the
 * message are transferred (the caller keeps no copy of them); a created value comes back the same
 * way. The step is killed at `timeoutMs`.
 */
export function runRotatorStep(rotatorPath: string, msg: RotatorStepMessage, options: { timeoutMs: number; maxOldGenerationSizeMb: number; log: Logger }): Promise<Uint8Array | undefined> {
  const worker = new Worker(ENTRY, {
    workerData: { rotatorPath },
    env: { NODE_ENV: process.env.NODE_ENV ?? 'production' },
    argv: [],
    resourceLimits: { maxOldGenerationSizeMb: options.maxOldGenerationSizeMb },
  });
  return new Promise<Uint8Array | undefined>((resolve, reject) => {
    let settled = false;
    const finish = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      void worker.terminate();
      fn();
    };
    const timer = setTimeout(() => finish(() => reject(new TimeoutError(`rotator step "${msg.step}" of ${msg.secret} exceeded ${options.timeoutMs} ms; its sandbox was terminated`))), options.timeoutMs);
    worker.on('message', (m: RotatorStepReply) => {
      if (m.type === 'ready') {
        const transfer = [msg.current, msg.value].filter((v): v is Uint8Array => v !== undefined).map((v) => v.buffer as ArrayBuffer);
        worker.postMessage(msg, transfer);
      } else if (m.type === 'log') options.log.info(m.msg, { secret: msg.secret, step: msg.step, source: 'rotator' });
      else if (m.type === 'done') finish(() => (m.ok ? resolve(m.value) : reject(deserializeError(m.error))));
    });
    worker.on('error', (err) => finish(() => reject(err)));
    worker.on('exit', (code) => finish(() => reject(new Error(`rotator sandbox exited with code ${code} during step "${msg.step}"`))));
  });
}
