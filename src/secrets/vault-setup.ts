/**
 * `fleet vault setup`: the one-time Vault side of the fleet, with an admin token. Kept apart from
 * the provider (which runs with the supervisor's and rotator's narrow identities).
 */
import { randomBytes } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import { fieldOf } from '../errors.js';
import { nodeVaultClient, statusOf, vaultError, vaultHttpsAgent } from './vault-http.js';
import { ROTATE_POLICY_PREFIX, ROTATE_TOKEN_ROLE } from './vault-provider.js';

/**
 * One-time setup with an admin token (`fleet vault setup`): a read policy per job type, the
 * token role job tokens are minted through, the supervisor's policy, and its AppRole. Returns
 * the AppRole role_id and a fresh secret_id for the supervisors.
 */
export async function setupVault(options: {
  address: string;
  adminToken: string;
  mount: string;
  prefix: string;
  tokenRole: string;
  policyPrefix: string;
  approleMount: string;
  /** job type → secret names it may read from Vault */
  scopes: ReadonlyMap<string, readonly string[]>;
  /** Secret name → the Vault path that mints it per job (secrets.items.*.dynamic.path). */
  dynamic?: ReadonlyMap<string, string>;
  /** Vault secrets with a rotation policy: each gets a write policy of its own. */
  rotated?: readonly string[];
  /**
   * The fleet's own keys (the audit MAC key, the data key of job data at rest), read by supervisors and the scheduler with their own
   * identity; created (64 random hex characters) when missing.
   */
  systemSecrets?: readonly string[];
  /** For an https address: CA, client certificate and key (secrets.vault.tls, loaded). @defaultValue Node's bundled roots */
  tls?: ConnectionOptions;
}): Promise<{ roleId: string; secretId: string; rotator: { roleId: string; secretId: string }; policies: string[] }> {
  const httpsAgent = vaultHttpsAgent(options.tls, false);
  try {
    return await setup(options, nodeVaultClient(options.address), httpsAgent);
  } finally {
    httpsAgent.destroy();
  }
}

async function setup(
  options: Parameters<typeof setupVault>[0],
  client: ReturnType<typeof nodeVaultClient>,
  httpsAgent: ReturnType<typeof vaultHttpsAgent>,
): ReturnType<typeof setupVault> {
  const call = (method: 'GET' | 'POST' | 'PUT', path: string, json?: unknown): Promise<unknown> =>
    client
      .request({
        method,
        path: `/${path}`,
        headers: { 'X-Vault-Token': options.adminToken },
        httpsAgent,
        ...(json === undefined ? {} : { json }),
      })
      .catch((err: unknown) => {
        throw vaultError(err, `setup: ${method} ${path}`);
      });
  const policies: string[] = [];
  for (const [jobType, names] of options.scopes) {
    const name = `${options.policyPrefix}${jobType}`;
    // A dynamic secret's path is read by the job token (so the lease is the job's); a stored one's KV path.
    const rules = names.length
      ? names
          .map(
            (n) =>
              `path "${options.dynamic?.get(n) ?? `${options.mount}/data/${options.prefix}/${n}`}" {\n  capabilities = ["read"]\n}`,
          )
          .join('\n')
      : '# no secrets';
    await call('PUT', `sys/policies/acl/${name}`, { policy: rules });
    policies.push(name);
  }
  const systemReads = (options.systemSecrets ?? []).map(
    (n) => `path "${options.mount}/data/${options.prefix}/${n}" {\n  capabilities = ["read"]\n}`,
  );
  for (const n of options.systemSecrets ?? []) {
    const exists = await client
      .request({
        method: 'GET',
        path: `/${options.mount}/data/${options.prefix}/${n}`,
        headers: { 'X-Vault-Token': options.adminToken },
        httpsAgent,
      })
      .then(() => true)
      .catch((err: unknown) => {
        if (statusOf(err) === 404) return false;
        throw vaultError(err, `setup: GET ${n}`);
      });
    if (!exists)
      await call('PUT', `${options.mount}/data/${options.prefix}/${n}`, {
        data: { value: randomBytes(32).toString('hex') },
      });
  }
  const supervisorPolicy = [
    ...systemReads,
    `path "auth/token/create/${options.tokenRole}" {\n  capabilities = ["create", "update"]\n}`,
    'path "auth/token/revoke-accessor" {\n  capabilities = ["update"]\n}',
    'path "auth/token/renew-self" {\n  capabilities = ["update"]\n}',
    'path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}',
    // At job end the supervisor revokes each dynamic credential and waits for the backend to destroy
    // it (revoking, never reading: the lease id alone grants nothing else).
    // A ledger sweep reads whose a job token is from Vault itself (the ledger in Redis only points at it).
    ...(options.dynamic?.size
      ? [
          'path "sys/leases/revoke" {\n  capabilities = ["update"]\n}',
          'path "auth/token/lookup-accessor" {\n  capabilities = ["update"]\n}',
        ]
      : []),
  ].join('\n');
  await call('PUT', 'sys/policies/acl/fleet-supervisor', { policy: supervisorPolicy });
  policies.push('fleet-supervisor');
  // The rotation scheduler reads metadata and mints, per rotation, a token that can write exactly
  // the one secret being rotated (policy fleet-rotate-<secret>); it cannot mint job tokens.
  const path = (kind: string, suffix: string): string => `${options.mount}/${kind}/${options.prefix}${suffix}`;
  for (const secret of options.rotated ?? []) {
    const rules = [
      `path "${path('data', `/${secret}`)}" {\n  capabilities = ["create", "update", "read"]\n}`,
      `path "${path('data', `-pending/${secret}`)}" {\n  capabilities = ["create", "update", "read"]\n}`,
      `path "${path('metadata', `-pending/${secret}`)}" {\n  capabilities = ["delete"]\n}`,
      `path "${path('metadata', `/${secret}`)}" {\n  capabilities = ["read"]\n}`,
      `path "${path('destroy', `/${secret}`)}" {\n  capabilities = ["update"]\n}`,
    ].join('\n');
    await call('PUT', `sys/policies/acl/${ROTATE_POLICY_PREFIX}${secret}`, { policy: rules });
    policies.push(`${ROTATE_POLICY_PREFIX}${secret}`);
  }
  const rotatorPolicy = [
    ...systemReads,
    `path "auth/token/create/${ROTATE_TOKEN_ROLE}" {\n  capabilities = ["create", "update"]\n}`,
    'path "auth/token/revoke-accessor" {\n  capabilities = ["update"]\n}',
    `path "${path('metadata', '/*')}" {\n  capabilities = ["read", "list"]\n}`,
    `path "${path('metadata', '')}" {\n  capabilities = ["list"]\n}`,
    'path "auth/token/renew-self" {\n  capabilities = ["update"]\n}',
    'path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}',
  ].join('\n');
  await call('PUT', 'sys/policies/acl/fleet-rotator', { policy: rotatorPolicy });
  policies.push('fleet-rotator');
  await call('POST', `auth/token/roles/${ROTATE_TOKEN_ROLE}`, {
    allowed_policies_glob: [`${ROTATE_POLICY_PREFIX}*`],
    disallowed_policies: ['root'],
    orphan: false,
    renewable: false,
    token_type: 'service',
    token_explicit_max_ttl: 900,
  });
  await call('POST', `auth/token/roles/${options.tokenRole}`, {
    allowed_policies_glob: [`${options.policyPrefix}*`],
    disallowed_policies: ['root', 'default'],
    orphan: false,
    renewable: false,
    token_type: 'service',
    token_explicit_max_ttl: 3600,
  });
  const auths = await call('GET', 'sys/auth');
  const mounts = fieldOf(auths, 'data') ?? auths;
  if (fieldOf(mounts, `${options.approleMount}/`) === undefined)
    await call('POST', `sys/auth/${options.approleMount}`, { type: 'approle' });
  const creds = async (role: string, policy: string): Promise<{ roleId: string; secretId: string }> => {
    await call('POST', `auth/${options.approleMount}/role/${role}`, {
      token_policies: [policy],
      token_ttl: '1h',
      token_max_ttl: '24h',
      secret_id_ttl: '0',
    });
    const roleId = String(
      fieldOf(fieldOf(await call('GET', `auth/${options.approleMount}/role/${role}/role-id`), 'data'), 'role_id'),
    );
    const secretId = String(
      fieldOf(
        fieldOf(await call('POST', `auth/${options.approleMount}/role/${role}/secret-id`, {}), 'data'),
        'secret_id',
      ),
    );
    return { roleId, secretId };
  };
  const supervisor = await creds('fleet-supervisor', 'fleet-supervisor');
  const rotator = await creds('fleet-rotator', 'fleet-rotator');
  return { ...supervisor, rotator, policies };
}
