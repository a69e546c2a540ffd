import type { AgentOptions } from 'node:https';
import { SecretUnavailableError, toError, type ErrorCode } from '../errors.js';

/**
 * What the AWS-backed providers (KMS, Secrets Manager) share: how their SDK clients are built and
 * how an SDK failure becomes a named {@link SecretUnavailableError}. The SDKs themselves are
 * imported by each provider, so loading one never loads the other.
 */

export interface AwsClientOptions {
  region: string;
  /** For local AWS-API servers (moto, local-kms). @defaultValue AWS */
  endpoint?: string;
  requestTimeoutMs: number;
}

/**
 * The client settings both SDK clients take: one retry (a job start should fail fast and say why,
 * not sit in the SDK's backoff), a per-request timeout, and certificate verification set on the
 * SDK's own HTTPS agent (options it builds its agent from, so the client's destroy() closes it):
 * without it, NODE_TLS_REJECT_UNAUTHORIZED=0 would send signed requests, and take data keys and
 * secret values back, from whoever answers.
 */
export function awsClientConfig(o: AwsClientOptions): {
  region: string;
  endpoint?: string;
  maxAttempts: number;
  requestHandler: { requestTimeout: number; httpsAgent: AgentOptions };
} {
  return {
    region: o.region,
    maxAttempts: 2,
    requestHandler: {
      requestTimeout: o.requestTimeoutMs,
      httpsAgent: { rejectUnauthorized: true, keepAlive: true, maxSockets: 50 },
    },
    ...(o.endpoint ? { endpoint: o.endpoint } : {}),
  };
}

/** How one AWS error name maps: the code, whether retrying can help, and the message (naming the fix). */
export type AwsErrorMapping = [code: ErrorCode, retryable: boolean, message: string];

/**
 * An AWS SDK failure as a specific, named error. `byName` maps the service's own exception names;
 * the credential failures every AWS API shares are mapped here. Anything else (a refused
 * connection, a timeout, a 5xx) is SECRET_PROVIDER_UNAVAILABLE and retryable, with `unreachableFix`.
 */
export function awsError(
  err: unknown,
  service: string,
  what: string,
  subject: string,
  byName: Record<string, AwsErrorMapping>,
  unreachableFix: string,
): SecretUnavailableError {
  const e = toError(err);
  const shared: Record<string, AwsErrorMapping> = {
    ExpiredTokenException: ['SECRET_AUTH_EXPIRED', true, `AWS credentials expired during ${what} for ${subject}.`],
    UnrecognizedClientException: [
      'SECRET_AUTH_EXPIRED',
      false,
      `AWS rejected the credentials during ${what} for ${subject}. Fix: check the AWS credentials of the supervisor.`,
    ],
  };
  const known = byName[e.name] ?? shared[e.name];
  if (known) return new SecretUnavailableError(known[0], known[2], { retryable: known[1], cause: err });
  return new SecretUnavailableError(
    'SECRET_PROVIDER_UNAVAILABLE',
    `${service} is unreachable or failed during ${what} for ${subject} (${e.name}: ${e.message}). Fix: ${unreachableFix}.`,
    { retryable: true, cause: err },
  );
}

/** Sends one SDK command; a failure becomes the error `map` makes of it. */
export async function sendMapped<T>(send: () => Promise<T>, map: (err: unknown) => Error): Promise<T> {
  try {
    return await send();
  } catch (err) {
    throw map(err);
  }
}
