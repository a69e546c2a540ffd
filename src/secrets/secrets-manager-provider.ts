import { randomUUID } from 'node:crypto';
import {
  CreateSecretCommand,
  DeleteSecretCommand,
  DescribeSecretCommand,
  GetSecretValueCommand,
  ListSecretsCommand,
  PutSecretValueCommand,
  SecretsManagerClient,
  UpdateSecretVersionStageCommand,
  type GetSecretValueCommandOutput,
} from '@aws-sdk/client-secrets-manager';
import { moveBytes, utf8Bytes } from '../bytes.js';
import { SecretUnavailableError, toError } from '../errors.js';
import { awsClientConfig, awsError, sendMapped, type AwsClientOptions } from './aws.js';
import { declaredLease } from './lease.js';
import type { LeaseRequest, SecretLease, SecretMetadata, SecretProvider, SecretValue } from './provider.js';

export interface SecretsManagerProviderOptions extends AwsClientOptions {
  /** Prepended to every fleet secret name to make its Secrets Manager name (`fleet/` → `fleet/api-key`). */
  namePrefix: string;
  /** The KMS key new secrets are created under. @defaultValue the account's `aws/secretsmanager` key */
  kmsKeyId?: string;
  /** `remove()`: days the secret stays restorable (7–30), or 0 for deletion without recovery. */
  recoveryWindowDays: number;
}

/** Secrets Manager's own staging labels; fleet's rotation moves these and no others. */
const CURRENT = 'AWSCURRENT';
const PENDING = 'AWSPENDING';
const PREVIOUS = 'AWSPREVIOUS';

/** Bytes that decode as UTF-8 and encode back to exactly themselves are stored as SecretString. */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * AWS Secrets Manager. A fleet secret `name` is the secret `namePrefix + name`; its fleet version is
 * the Secrets Manager `VersionId`. Jobs read the `AWSCURRENT` version. Rotation uses the service's
 * own staging labels, so a rotation by fleet and one by AWS's rotation look the same to every other
 * consumer: `writePending` adds a version labelled `AWSPENDING`; `promote` moves `AWSCURRENT` onto
 * it (Secrets Manager moves `AWSPREVIOUS` onto the old one) and drops its `AWSPENDING`; `retire`
 * removes the labels fleet gave a version (`AWSPENDING` of a failed rotation, `AWSPREVIOUS` after the
 * grace window), so Secrets Manager deprecates it and deletes it on its own schedule (it has no call
 * that deletes one version). Jobs only ever read `AWSCURRENT`.
 *
 * There is no per-job credential here: every read uses the supervisor's AWS identity, so a lease is
 * the fleet's own scope check, and its values are zero-filled at release.
 */
export class SecretsManagerProvider implements SecretProvider {
  readonly kind = 'secrets-manager' as const;
  readonly #o: SecretsManagerProviderOptions;
  readonly #sm: SecretsManagerClient;

  constructor(options: SecretsManagerProviderOptions) {
    this.#o = options;
    this.#sm = new SecretsManagerClient(awsClientConfig(options));
  }

  /** The Secrets Manager name of a fleet secret. */
  secretId(name: string): string {
    return `${this.#o.namePrefix}${name}`;
  }

  #error(err: unknown, what: string, name?: string, version?: string): SecretUnavailableError {
    const id = name === undefined ? null : this.secretId(name);
    const subject = id
      ? `secret "${name}" (Secrets Manager "${id}"${version ? `, version ${version}` : ''})`
      : 'Secrets Manager';
    const e = toError(err);
    // A secret scheduled for deletion answers InvalidRequestException to reads and writes.
    if (e.name === 'InvalidRequestException' && /deleted|deletion/i.test(e.message))
      return new SecretUnavailableError(
        'SECRET_NOT_FOUND',
        `${subject} is scheduled for deletion. Fix: aws secretsmanager restore-secret --secret-id ${id ?? '<name>'}, or after its recovery window set it again.`,
        { retryable: false, cause: err },
      );
    return awsError(
      err,
      'Secrets Manager',
      what,
      subject,
      {
        ResourceNotFoundException: [
          'SECRET_NOT_FOUND',
          false,
          version
            ? `${subject} does not exist.`
            : `${subject} does not exist. Fix: fleet secrets set ${name ?? '<name>'} --provider secrets-manager (value on stdin).`,
        ],
        AccessDeniedException: [
          'SECRET_PERMISSION_DENIED',
          false,
          `Secrets Manager denied ${what} for ${subject}. Fix: grant secretsmanager:${what} on arn:aws:secretsmanager:<region>:<account>:secret:${this.#o.namePrefix}* to the fleet's role (least-privilege policy: docs/secrets.md#secrets-manager-aws-secrets-manager).`,
        ],
        DecryptionFailure: [
          'SECRET_PERMISSION_DENIED',
          false,
          `Secrets Manager could not decrypt ${subject} with its KMS key. Fix: grant kms:Decrypt on that key to the fleet's role.`,
        ],
        EncryptionFailure: [
          'SECRET_PERMISSION_DENIED',
          false,
          `Secrets Manager could not encrypt ${subject} with its KMS key. Fix: grant kms:GenerateDataKey on ${this.#o.kmsKeyId ?? 'the key'} to the fleet's role, and check the key is enabled.`,
        ],
        InternalServiceError: [
          'SECRET_PROVIDER_UNAVAILABLE',
          true,
          `Secrets Manager failed during ${what} for ${subject}.`,
        ],
      },
      'check secrets.secretsManager.endpoint/region and network',
    );
  }

  #send<T>(what: string, send: () => Promise<T>, name?: string, version?: string): Promise<T> {
    return sendMapped(send, (err) => this.#error(err, what, name, version));
  }

  /** The value of one answer, in memory of its own; the SDK's copy of binary values is zeroed. */
  #value(name: string, res: GetSecretValueCommandOutput): SecretValue {
    const version = res.VersionId;
    let value: Uint8Array;
    if (res.SecretBinary) {
      value = moveBytes(res.SecretBinary);
    } else if (res.SecretString !== undefined) {
      value = utf8Bytes(res.SecretString);
    } else
      throw new SecretUnavailableError(
        'SECRET_NOT_FOUND',
        `secret "${name}" (Secrets Manager "${this.secretId(name)}") has a version without a value. Fix: fleet secrets set ${name} --provider secrets-manager.`,
      );
    if (!version) {
      value.fill(0);
      throw new SecretUnavailableError(
        'SECRET_PROVIDER_UNAVAILABLE',
        `Secrets Manager answered GetSecretValue for secret "${name}" without a VersionId`,
        { retryable: true },
      );
    }
    return { value, version };
  }

  async readCurrent(name: string): Promise<SecretValue> {
    const res = await this.#send(
      'GetSecretValue',
      () => this.#sm.send(new GetSecretValueCommand({ SecretId: this.secretId(name), VersionStage: CURRENT })),
      name,
    );
    return this.#value(name, res);
  }

  /**
   * One version by its VersionId, labelled or not: a retired version (no label left) stays readable
   * until Secrets Manager deletes it, because the audit MAC key's older versions must stay readable
   * to verify the records sealed with them, and Secrets Manager cannot delete a single version.
   */
  async readVersion(name: string, version: string): Promise<SecretValue> {
    const res = await this.#send(
      'GetSecretValue',
      () => this.#sm.send(new GetSecretValueCommand({ SecretId: this.secretId(name), VersionId: version })),
      name,
      version,
    );
    return this.#value(name, res);
  }

  lease(request: LeaseRequest): Promise<SecretLease> {
    return Promise.resolve(declaredLease(request, (name) => this.readCurrent(name)));
  }

  /** Text values go in SecretString (what other consumers and the console read), others in SecretBinary. */
  #payload(value: Uint8Array): { SecretString: string } | { SecretBinary: Uint8Array } {
    try {
      return { SecretString: strictUtf8.decode(value) };
    } catch {
      return { SecretBinary: value };
    }
  }

  async #put(name: string, value: Uint8Array, stages?: string[]): Promise<{ version: string }> {
    const token = randomUUID();
    const res = await this.#send(
      'PutSecretValue',
      () =>
        this.#sm.send(
          new PutSecretValueCommand({
            SecretId: this.secretId(name),
            ClientRequestToken: token,
            ...this.#payload(value),
            ...(stages ? { VersionStages: stages } : {}),
          }),
        ),
      name,
    );
    return { version: res.VersionId ?? token };
  }

  /** A new version labelled AWSCURRENT (Secrets Manager moves AWSPREVIOUS); the secret is created if absent. */
  async write(name: string, value: Uint8Array): Promise<{ version: string }> {
    try {
      return await this.#put(name, value);
    } catch (err) {
      if (!(err instanceof SecretUnavailableError) || err.code !== 'SECRET_NOT_FOUND' || /deletion/.test(err.message))
        throw err;
    }
    const token = randomUUID();
    try {
      const res = await this.#sm.send(
        new CreateSecretCommand({
          Name: this.secretId(name),
          ClientRequestToken: token,
          Description: `fleet secret ${name}`,
          ...(this.#o.kmsKeyId ? { KmsKeyId: this.#o.kmsKeyId } : {}),
          ...this.#payload(value),
        }),
      );
      return { version: res.VersionId ?? token };
    } catch (err) {
      // Created by someone else since our put: add our value as a version of theirs.
      if (toError(err).name === 'ResourceExistsException') return this.#put(name, value);
      throw this.#error(err, 'CreateSecret', name);
    }
  }

  /**
   * Rotation: a new version labelled AWSPENDING; jobs keep reading AWSCURRENT. The secret must
   * exist: Secrets Manager makes the first version of a secret AWSCURRENT whatever it is labelled.
   */
  writePending(name: string, value: Uint8Array): Promise<{ version: string }> {
    return this.#put(name, value, [PENDING]);
  }

  async #stages(name: string): Promise<Record<string, string[]>> {
    const res = await this.#send(
      'DescribeSecret',
      () => this.#sm.send(new DescribeSecretCommand({ SecretId: this.secretId(name) })),
      name,
    );
    return res.VersionIdsToStages ?? {};
  }

  /** Moves a staging label: onto `to`, off `from` (either may be absent). */
  async #label(name: string, stage: string, { to, from }: { to?: string; from?: string }): Promise<void> {
    await this.#send(
      'UpdateSecretVersionStage',
      () =>
        this.#sm.send(
          new UpdateSecretVersionStageCommand({
            SecretId: this.secretId(name),
            VersionStage: stage,
            ...(to ? { MoveToVersionId: to } : {}),
            ...(from ? { RemoveFromVersionId: from } : {}),
          }),
        ),
      name,
      to ?? from,
    );
  }

  /** AWSCURRENT moves onto the pending version (AWSPREVIOUS onto the old one), then its AWSPENDING goes. */
  async promote(name: string, pendingVersion: string): Promise<{ version: string }> {
    const stages = await this.#stages(name);
    const labels = stages[pendingVersion];
    if (!labels)
      throw new SecretUnavailableError(
        'SECRET_NOT_FOUND',
        `secret "${name}" has no Secrets Manager version ${pendingVersion} to promote`,
      );
    const current = Object.entries(stages).find(([, l]) => l.includes(CURRENT))?.[0];
    if (current !== pendingVersion)
      await this.#label(name, CURRENT, { to: pendingVersion, ...(current ? { from: current } : {}) });
    if (labels.includes(PENDING)) await this.#label(name, PENDING, { from: pendingVersion });
    return { version: pendingVersion };
  }

  /**
   * Takes the labels fleet gave `version` off it (AWSPENDING, AWSPREVIOUS); labels others attached
   * stay. The current version is never retired.
   */
  async retire(name: string, version: string): Promise<void> {
    const labels = (await this.#stages(name))[version] ?? [];
    if (labels.includes(CURRENT)) return;
    for (const stage of labels.filter((l) => l === PENDING || l === PREVIOUS))
      await this.#label(name, stage, { from: version });
  }

  /** ListSecrets' filter for names under the prefix (Secrets Manager matches it case-insensitively). */
  #underPrefix(): { Filters?: { Key: 'name'; Values: string[] }[] } {
    return this.#o.namePrefix ? { Filters: [{ Key: 'name', Values: [this.#o.namePrefix] }] } : {};
  }

  /**
   * Every secret under the name prefix that has a current version. `updatedAt` is Secrets Manager's
   * LastChangedDate: the last change of any kind (a pending version too).
   */
  async list(): Promise<SecretMetadata[]> {
    const out: SecretMetadata[] = [];
    let next: string | undefined;
    do {
      const token = next;
      const page = await this.#send('ListSecrets', () =>
        this.#sm.send(
          new ListSecretsCommand({
            ...this.#underPrefix(),
            ...(token ? { NextToken: token } : {}),
          }),
        ),
      );
      for (const s of page.SecretList ?? []) {
        // The name filter is a case-insensitive prefix match: keep exactly our prefix.
        if (!s.Name?.startsWith(this.#o.namePrefix)) continue;
        const current = Object.entries(s.SecretVersionsToStages ?? {}).find(([, l]) => l.includes(CURRENT))?.[0];
        if (!current) continue;
        out.push({
          name: s.Name.slice(this.#o.namePrefix.length),
          version: current,
          updatedAt: (s.LastChangedDate ?? s.CreatedDate)?.getTime() ?? 0,
        });
      }
      next = page.NextToken || undefined;
    } while (next);
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async remove(name: string): Promise<void> {
    const days = this.#o.recoveryWindowDays;
    await this.#send(
      'DeleteSecret',
      () =>
        this.#sm.send(
          new DeleteSecretCommand({
            SecretId: this.secretId(name),
            ...(days ? { RecoveryWindowInDays: days } : { ForceDeleteWithoutRecovery: true }),
          }),
        ),
      name,
    );
  }

  /** One ListSecrets call: the endpoint answers and the credentials are accepted. */
  async check(): Promise<void> {
    await this.#send('ListSecrets', () =>
      this.#sm.send(
        new ListSecretsCommand({
          MaxResults: 1,
          ...this.#underPrefix(),
        }),
      ),
    );
  }

  close(): Promise<void> {
    this.#sm.destroy();
    return Promise.resolve();
  }
}
