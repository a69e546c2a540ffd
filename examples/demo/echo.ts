import type { Processor } from 'fleet';

/** Demo: returns what it was given, with a timestamp. */
const echo: Processor<{ message: string }> = async (job, ctx) => {
  ctx.log.info('echoing', { length: job.data.message.length });
  return { echo: job.data.message, at: new Date().toISOString() };
};
export default echo;
