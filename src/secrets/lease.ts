import { SecretUnavailableError } from '../errors.js';
import type { LeaseRequest, SecretLease, SecretValue } from './provider.js';

/**
 * A lease for providers that mint no credential per job (local, KMS, Secrets Manager): it reads
 * with the provider's own identity, so the scope is ours to hold. It grants exactly the requested
 * names; `release()` zero-fills every value it handed out (a caller that transferred a value holds
 * an empty view by then) and refuses reads from then on, as a revoked Vault job token does.
 */
export function declaredLease(request: LeaseRequest, read: (name: string) => Promise<SecretValue>): SecretLease {
  const allowed = new Set(request.names);
  const handed: Uint8Array[] = [];
  let ended = false;
  const endedError = (): SecretUnavailableError =>
    new SecretUnavailableError(
      'SECRET_AUTH_EXPIRED',
      `the secret lease of ${request.jobId} was released at its end; a read after that is refused`,
    );
  return {
    read: async (name: string): Promise<SecretValue> => {
      if (ended) throw endedError();
      if (!allowed.has(name))
        throw new SecretUnavailableError(
          'SECRET_PERMISSION_DENIED',
          `lease for ${request.jobId} does not cover "${name}"`,
        );
      const v = await read(name);
      if (ended) {
        // Released while this read was in flight: the value is not handed out.
        v.value.fill(0);
        throw endedError();
      }
      handed.push(v.value);
      return v;
    },
    release: () => {
      ended = true;
      for (const value of handed.splice(0)) value.fill(0);
      return Promise.resolve();
    },
  };
}
