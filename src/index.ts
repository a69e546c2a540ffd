export { defineConfig, resolveConfig, type FleetConfig, type JobType } from './config/resolve.js';
export { findConfigFile, loadConfig } from './config/load.js';
export type { FleetConfigInput, JobTypeInput } from './config/schema.js';
export * from './errors.js';
export { FleetEventBus, type FleetEvents, type JobOutcome, type LifecycleState } from './events.js';
export { makeLogger, type Logger } from './observability/logger.js';
export {
  createProducer,
  Producer,
  type EnqueueOptions,
  type EnqueueResult,
  type PayloadsOf,
} from './producers/producer.js';
export type { JobView, JobTypeView } from './producers/job-view.js';
export { Supervisor, type SupervisorOptions, type SupervisorStatus } from './workers/supervisor.js';
export type { Processor, ProcessorContext, ProcessorJob } from './workers/processor-api.js';
export { startEmbeddedRedis, type EmbeddedRedis } from './redis/embedded-redis.js';
export type { Rotator, RotatorContext } from './rotation/rotators.js';
export { RotationService } from './rotation/rotation-service.js';
export type { ProcessorSecrets } from './workers/processor-api.js';
export type { SecretProvider, SecretValue, ProviderKind } from './secrets/provider.js';
export { startFleet, type FleetProcess, type Role } from './app.js';
