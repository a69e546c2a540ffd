import { z } from 'zod';

/**
 * The fleet configuration, as written in `fleet.config.ts|js|json`. Parsed once at start-up by
 * {@link resolveConfig} into a frozen {@link FleetConfig} with every default filled in.
 */

/** Job type names become queue names, Redis hash tags and URL segments: keep them boring. */
export const JOB_TYPE_NAME = /^[a-z][a-z0-9-]{0,62}$/;
export const SECRET_NAME = /^[a-z][a-z0-9-]{0,126}$/;

/** The production rule from the zero-trust checklist: critical work is killed within 120 s. */
export const CRITICAL_MAX_TIMEOUT_MS = 120_000;

const isZodSchema = (v: unknown): v is z.ZodType => v instanceof z.ZodType;

/**
 * PEM files of a TLS client, paths relative to the config file. Each setting left unset is read
 * from its environment variable (named where this is used). Verification of the server's
 * certificate is always on; no setting turns it off.
 */
const tlsClientSchema = z
  .object({
    /** CA certificates (PEM) trusted for the server's certificate, instead of Node's bundled roots. @defaultValue its environment variable, else Node's bundled roots */
    caFile: z.string().min(1).optional(),
    /** Client certificate (PEM), for a server that requires one; with keyFile. @defaultValue its environment variable, else none */
    certFile: z.string().min(1).optional(),
    /** The client certificate's unencrypted private key (PEM). @defaultValue its environment variable, else none */
    keyFile: z.string().min(1).optional(),
    /** The name the server's certificate must carry, when it is not the host connected to. @defaultValue its environment variable, else the host */
    servername: z.string().min(1).optional(),
  })
  .strict();

const backoffSchema = z
  .object({
    /** `exponential` doubles the delay after each try; `fixed` keeps it. @defaultValue `"exponential"` */
    type: z.enum(['exponential', 'fixed']).default('exponential'),
    /** First retry delay. @defaultValue 1000 */
    delayMs: z.number().int().min(0).default(1000),
  })
  .strict();

export const jobTypeSchema = z
  .object({
    /** Queue and URL name: lowercase letters, digits, dashes. */
    name: z.string().regex(JOB_TYPE_NAME, 'use lowercase letters, digits and dashes, starting with a letter (max 63)'),
    /** Path of the processor module (ESM, `.js`/`.mjs`/`.ts`), relative to the config file. */
    processor: z.string().min(1),
    /** A zod schema (TS/JS config) or a JSON Schema object (JSON config) for the payload; served as JSON Schema by `GET /v1/job-types`. @defaultValue any JSON value */
    payloadSchema: z.union([z.custom<z.ZodType>(isZodSchema), z.record(z.string(), z.unknown())]).optional(),
    /** Shown by `GET /v1/job-types` and in the OpenAPI document. @defaultValue `""` */
    description: z.string().default(''),
    /** `critical` work must use per-job isolation and a timeout ≤ 120 s. @defaultValue `"routine"` */
    sensitivity: z.enum(['critical', 'routine']).default('routine'),
    /** `job`: a fresh sandbox per job, destroyed at its end. `pool`: sandboxes reused within this type. @defaultValue `"job"` */
    isolation: z.enum(['job', 'pool']).default('job'),
    /** Hard limit: the sandbox is terminated at this point even if the code never yields. @defaultValue 300000 */
    timeoutMs: z.number().int().positive().default(300_000),
    /** How long before the hard kill the processor's `ctx.signal` is aborted. @defaultValue 1000 */
    abortGraceMs: z.number().int().min(0).default(1000),
    /** Jobs of this type run at once per supervisor. @defaultValue 4 */
    concurrency: z.number().int().positive().max(1000).default(4),
    /** Cap across all supervisors (BullMQ global concurrency). @defaultValue unlimited */
    globalConcurrency: z.number().int().positive().optional(),
    /** V8 old-generation heap limit of each sandbox; exceeding it fails the job with `MEMORY_LIMIT`. @defaultValue 128 */
    maxOldGenerationSizeMb: z.number().int().min(8).default(128),
    /** `pool` only: sandboxes are recycled after this many jobs. @defaultValue 1000 */
    maxJobsPerSandbox: z.number().int().positive().default(1000),
    /** `pool` only: a sandbox whose heap after a job exceeds this is recycled. @defaultValue 75% of maxOldGenerationSizeMb */
    recycleHeapUsedMb: z.number().positive().optional(),
    /** Sandboxes kept started and idle so a job never waits for a spawn. @defaultValue concurrency (job), 1 (pool) */
    warmSandboxes: z.number().int().min(0).optional(),
    /** Total tries, including the first. @defaultValue 3 */
    attempts: z.number().int().positive().default(3),
    /** Delay between tries. @defaultValue `{ type: "exponential", delayMs: 1000 }` */
    backoff: backoffSchema.default({ type: 'exponential', delayMs: 1000 }),
    /** Whether a timed-out job is retried (within `attempts`). @defaultValue true */
    retryOnTimeout: z.boolean().default(true),
    /** Results larger than this (JSON bytes) fail the job with `RESULT_TOO_LARGE`, checked by the supervisor whatever the sandbox sends. @defaultValue 1048576 */
    maxResultBytes: z
      .number()
      .int()
      .positive()
      .default(1024 * 1024),
    /**
     * The secrets this type may use; nothing else is ever handed to it. A name alone takes the
     * secret's default mode: `inject` when the secret has a `binding`, else `deliver`. Or
     * `{ name, mode }`: `deliver` hands the value to the sandbox (keys used locally: signing,
     * decryption); `inject` gives it only a placeholder, swapped for the value by the egress proxy
     * toward the secret's bound hosts. @defaultValue []
     */
    secrets: z
      .array(
        z.union([
          z.string().regex(SECRET_NAME),
          z.object({ name: z.string().regex(SECRET_NAME), mode: z.enum(['deliver', 'inject']) }).strict(),
        ]),
      )
      .default([]),
    /**
     * The boundary each sandbox of this type runs behind. `process`: its own OS process with an
     * empty environment, under Node's permission model and (on Linux) its own namespaces.
     * `thread`: a worker thread of the supervisor, which bounds time and memory but is no security
     * boundary; refused for types with secrets or `critical` ones. @defaultValue `"process"` when
     * the type declares secrets or is critical, else `"thread"`
     */
    sandbox: z.enum(['process', 'thread']).optional(),
    /**
     * Where a process sandbox may connect, enforced outside it by the supervisor's egress proxy:
     * `"none"`, `"any"` (public addresses only), or a list of `host:port` / `*.domain:port`
     * patterns (port defaults to 443). Loopback, link-local (cloud metadata), private addresses and
     * the fleet's own Redis/Vault/KMS are refused unless listed by address. @defaultValue `"none"`
     */
    egress: z
      .union([
        z.enum(['none', 'any']),
        z.array(z.string().regex(/^(\*\.)?[a-z0-9.-]+(:\d{1,5})?$/i, 'use host, host:port or *.domain:port')).min(1),
      ])
      .default('none'),
    /**
     * What one job may send out of its sandbox, enforced by the supervisor outside it. A sandbox's
     * own runtime keeps an honest processor within them (it drops log lines past the cap, throws on
     * an oversized progress value); a sandbox that goes past them anyway is killed and its job fails
     * with `SANDBOX_LIMIT`.
     */
    limits: z
      .object({
        /** Log lines per job (ctx.log and console together); the rest are dropped. @defaultValue 1000 */
        maxLogLines: z.number().int().min(1).max(1_000_000).default(1000),
        /** Log characters per job (messages and fields); the rest are dropped. @defaultValue 1048576 */
        maxLogBytes: z
          .number()
          .int()
          .min(1024)
          .default(1024 * 1024),
        /** JSON bytes of one ctx.progress() value. @defaultValue 16384 */
        maxProgressBytes: z
          .number()
          .int()
          .min(64)
          .max(1024 * 1024)
          .default(16 * 1024),
        /** ctx.secrets requests per job for names not delivered at its start. @defaultValue 100 */
        maxSecretRequests: z.number().int().min(0).default(100),
        /** Denied secret requests per job; one more kills the sandbox. @defaultValue 10 */
        maxDeniedSecretRequests: z.number().int().min(0).default(10),
        /** Messages of any kind per job. @defaultValue 100000 */
        maxMessagesPerJob: z.number().int().min(100).default(100_000),
        /** Egress connections a process sandbox holds open at once; more are dropped. @defaultValue 64 */
        maxEgressConnections: z.number().int().min(1).max(10_000).default(64),
        /** Request bytes the injecting egress proxy holds at once for one sandbox. @defaultValue 2 × supervisor.injectMaxBodyBytes */
        maxEgressBufferedBytes: z.number().int().min(1024).optional(),
        /** Refused egress attempts per job (each one audited); one more kills the sandbox. @defaultValue 20 */
        maxEgressRefusals: z.number().int().min(0).default(20),
      })
      .strict()
      .prefault({}),
    /**
     * Memory of a whole process sandbox (heap, Buffers, native memory, its /tmp pages, kernel
     * memory), capped by its cgroup with swap off; going past it fails the job with MEMORY_LIMIT.
     * @defaultValue max(256, 2 × maxOldGenerationSizeMb + 128)
     */
    memoryLimitMb: z.number().int().min(64).optional(),
    /** Processes and threads of one process sandbox (cgroup pids.max; Node alone runs about a dozen threads). @defaultValue 64 */
    maxProcesses: z.number().int().min(16).max(100_000).default(64),
    /** CPU share of a process sandbox against the others, 1–10000 (cgroup weight; 100 is an equal share). @defaultValue 100 */
    cpuWeight: z.number().int().min(1).max(10_000).default(100),
    /** Hard CPU cap of a process sandbox, in percent of one core (cgroup quota). @defaultValue none */
    cpuQuotaPercent: z.number().int().min(1).max(100_000).optional(),
    /** Descriptors a process sandbox may hold (RLIMIT_NOFILE). @defaultValue 1024 */
    maxOpenFiles: z.number().int().min(64).max(1_048_576).default(1024),
    /** The largest file a process sandbox may write (RLIMIT_FSIZE). @defaultValue tmpSizeMb */
    maxFileSizeMb: z.number().int().min(1).optional(),
    /** Size cap of a process sandbox's private /tmp (OS layer). @defaultValue 64 */
    tmpSizeMb: z.number().int().min(1).max(4096).default(64),
    /** Extra read-only paths a process sandbox may read besides its processor's directory (absolute or relative to the config). @defaultValue [] */
    readPaths: z.array(z.string().min(1)).default([]),
    /**
     * Seal this type's job data at rest: payloads, results, progress values, failure reasons and
     * log lines are stored in Redis as AES-256-GCM envelopes under the fleet's data key
     * (`secrets.dataKey`), bound to the job's type, id, owner and field. Only the fleet's producers
     * (HTTP API, TypeScript producer) can enqueue such a type; a job written by another BullMQ
     * client fails with `JOB_DATA_NOT_SEALED`. @defaultValue false
     */
    encryptData: z.boolean().default(false),
    /** Finished jobs are kept this long (seconds), so their status and idempotency keys hold. @defaultValue 86400 */
    keepCompletedSeconds: z.number().int().min(0).default(86_400),
    /** Failed jobs are kept this long (seconds). @defaultValue 604800 */
    keepFailedSeconds: z.number().int().min(0).default(604_800),
  })
  .strict();

/**
 * The owner names the fleet's own producers record on the jobs they enqueue: the TypeScript
 * `Producer`'s default, `fleet enqueue`, the API's own and Bull Board's. A job's owner reads it (and
 * its sealed data in plaintext) through the API, so no HTTP producer may take one of these names.
 */
export const FLEET_PRODUCER_NAMES = {
  /** `new Producer({ config })` without a name. */
  client: 'client',
  /** `fleet enqueue`. */
  cli: 'cli',
  /** The API process's base producer. */
  api: 'api',
  /** Bull Board (read-only, no data key). */
  board: 'bull-board',
} as const;

const TOKEN_SHA256 = z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex characters: sha256 of the token');

export const producerSchema = z
  .object({
    /**
     * Shown in logs and audit records, and recorded as the owner of the jobs it enqueues: one name
     * per service, none of the fleet's own: `client`, `cli`, `api`, `bull-board`
     * ({@link FLEET_PRODUCER_NAMES}).
     */
    name: z.string().min(1).max(100),
    /**
     * SHA-256 (hex) of the bearer token (`printf %s "$TOKEN" | sha256sum`); several while a token is
     * rotated (every one of them acts as this producer). Tokens themselves never sit in config.
     */
    tokenSha256: z.union([TOKEN_SHA256, z.array(TOKEN_SHA256).min(1).max(8)]),
    /** Job types this producer may enqueue and read; `"*"` for all. */
    jobTypes: z.array(z.string()).min(1),
    /** Sees and cancels every job, reads the audit log (`GET /v1/audit`) and may open Bull Board. @defaultValue false */
    admin: z.boolean().default(false),
    /** Job types whose jobs it may read although other producers enqueued them (`"*"` for all); it always reads and cancels its own. @defaultValue [] */
    read: z.array(z.string()).default([]),
  })
  .strict();

/**
 * Every secret backend, by the name config uses. `secrets-manager` is AWS Secrets Manager, named
 * after the service as `kms` is (the AWS SDK client is `client-secrets-manager`).
 */
export const PROVIDER_KINDS = ['local', 'vault', 'kms', 'exec', 'secrets-manager'] as const;
const providerKind = z.enum(PROVIDER_KINDS);
/** A secret backend's name, as the config spells it. */
export type ProviderKind = z.infer<typeof providerKind>;

/** Names under `secrets.exec` (sent to the program as `provider`) and the ids it is asked for: OpenClaw's patterns. */
export const EXEC_PROGRAM_NAME = /^[a-z][a-z0-9_-]{0,63}$/;
export const EXEC_ID = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const absolutePath = z.string().startsWith('/', 'must be an absolute path (there is no shell and no PATH lookup)');

/**
 * One program of the `exec` provider (OpenClaw's exec secret provider protocol). It is run with no
 * shell, `{"protocolVersion":1,"provider":<name>,"ids":[…]}` on stdin, and answers
 * `{"protocolVersion":1,"values":{…},"errors":{…}}` on stdout.
 */
export const execProgramSchema = z
  .object({
    /** Absolute path of the program. It must not be a symlink, or writable or owned by anyone but root or the supervisor's user, nor may any directory above it. */
    command: absolutePath,
    /** Its arguments, passed as they are (no shell). @defaultValue [] */
    args: z.array(z.string()).default([]),
    /** Variables passed from the supervisor's environment; nothing else is (not even PATH or HOME unless listed). @defaultValue [] */
    passEnv: z.array(z.string().regex(ENV_NAME)).default([]),
    /** Fixed variables for non-secret settings (credentials belong in passEnv, not in the config file). @defaultValue {} */
    env: z.record(z.string().regex(ENV_NAME), z.string()).default({}),
    /** The run is killed (its whole process group) past this. @defaultValue 5000 */
    timeoutMs: z.number().int().min(100).max(120_000).default(5000),
    /** stdout and stderr together; past it the run is killed. @defaultValue 1048576 */
    maxOutputBytes: z
      .number()
      .int()
      .min(1024)
      .max(64 * 1024 * 1024)
      .default(1024 * 1024),
    /** `false`: a program asked for one id may print the bare value instead of the JSON answer (`op read`, `sops -d --extract`). @defaultValue true */
    jsonOnly: z.boolean().default(true),
    /** Accept a symlinked command (a package manager's shim); its target is checked instead. Pair it with trustedDirs. @defaultValue false */
    allowSymlinkCommand: z.boolean().default(false),
    /** When given, the program (after symlinks) must lie inside one of these directories. @defaultValue [] */
    trustedDirs: z.array(absolutePath).default([]),
  })
  .strict();

export const rotationSchema = z
  .object({
    /** `daily`, `weekly`, an interval (`90s`, `6h`, `2d`) or a cron pattern (`0 3 * * *`, with `tz`). */
    schedule: z.string().min(1),
    /** Time zone of a cron schedule. @defaultValue UTC */
    tz: z.string().optional(),
    rotator: z.discriminatedUnion('type', [
      z
        .object({
          /** Mint a random token ourselves. */
          type: z.literal('random'),
          /** Random bytes in the new value. @defaultValue 32 */
          bytes: z.number().int().min(16).max(1024).default(32),
          /** How the bytes are written as the secret's value. @defaultValue `"base64url"` */
          encoding: z.enum(['hex', 'base64', 'base64url']).default('base64url'),
        })
        .strict(),
      /** KMS only: re-encrypt the same value under a fresh data key. */
      z.object({ type: z.literal('kms-rewrap') }).strict(),
      /**
       * The password of one fleet Redis role (the secret's value): set on every Redis node with
       * `ACL SETUSER` next to the current one, tested by logging in, and the old one removed when
       * the previous version retires (after `graceSeconds`). Needs an admin Redis URL in the
       * scheduler's environment, `adminUrlEnv`.
       */
      z
        .object({
          type: z.literal('redis-acl'),
          /** The fleet Redis role (user `fleet-<role>`) whose password this secret is. */
          role: z.enum(['api', 'worker', 'scheduler', 'ops', 'retention']),
          /** The scheduler's environment variable holding an admin Redis URL (one that may run `ACL SETUSER`). @defaultValue `"FLEET_REDIS_ADMIN_URL"` */
          adminUrlEnv: z
            .string()
            .regex(/^[A-Z_][A-Z0-9_]*$/)
            .default('FLEET_REDIS_ADMIN_URL'),
        })
        .strict(),
      /** A module exporting `create`, and optionally `set`, `test`, `finish` (external credentials). */
      z
        .object({
          type: z.literal('module'),
          /** The rotator module (`create`, and optionally `set`, `test`, `finish`), relative to the config file. */
          path: z.string().min(1),
          /** Where the rotator's sandbox may connect (the service it sets the credential on). Same syntax as a job type's egress. @defaultValue `"any"` (public addresses only) */
          egress: z.union([z.enum(['none', 'any']), z.array(z.string().min(1)).min(1)]).default('any'),
        })
        .strict(),
    ]),
    /** How long the previous version stays readable after promotion. @defaultValue 3600 */
    graceSeconds: z.number().int().min(0).default(3600),
    /** Tries of a failing rotation (exponential backoff). @defaultValue 5 */
    attempts: z.number().int().min(1).default(5),
    /** First retry delay of a failing rotation. @defaultValue 5000 */
    backoffMs: z.number().int().min(0).default(5000),
  })
  .strict();

export const secretsSchema = z
  .object({
    /** Provider of every secret not given one in `items`. @defaultValue `"local"` (dev only) */
    provider: providerKind.default('local'),
    /** Per-secret settings. A secret a job type names needs no entry unless it differs from the defaults. */
    items: z
      .record(
        z.string().regex(SECRET_NAME),
        z
          .object({
            /** Where this secret is kept. @defaultValue secrets.provider */
            provider: providerKind.optional(),
            /**
             * `exec` provider only: which program answers for this secret and the id it is asked
             * by. @defaultValue the only program under secrets.exec; the secret's name as id
             */
            exec: z
              .object({
                /** The program under `secrets.exec` that answers for this secret. @defaultValue the only one configured */
                program: z.string().regex(EXEC_PROGRAM_NAME).optional(),
                /** The id the program is asked for. @defaultValue the secret's name */
                id: z.string().regex(EXEC_ID, 'use letters, digits and . _ : / - (OpenClaw exec ids)').optional(),
              })
              .strict()
              .optional(),
            /** Drives rotation rules: API keys at least weekly, encryption keys daily. @defaultValue `"api-key"` */
            kind: z.enum(['api-key', 'encryption-key', 'other']).default('api-key'),
            /** Shown by `fleet status --secrets`. @defaultValue `""` */
            description: z.string().default(''),
            /** How and when the secret is rotated (see docs/rotation.md). @defaultValue none: `fleet doctor` warns */
            rotation: rotationSchema.optional(),
            /**
             * Vault only: a credential the backend creates for each job and destroys when the job ends
             * (a dynamic secret, e.g. the database engine's `database/creds/<role>`). The job's own
             * token reads it, so the lease is the job's; the supervisor revokes the lease when the job
             * ends, and Vault revokes it with the job token should the supervisor die. @defaultValue none (a stored value)
             */
            dynamic: z
              .object({
                /** The Vault path that mints the credential, e.g. `database/creds/orders-ro`. */
                path: z
                  .string()
                  .regex(
                    /^[a-zA-Z0-9_-]+(\/[a-zA-Z0-9_.@-]+)+$/,
                    'a Vault path such as "database/creds/orders-ro" (no leading slash, no "..")',
                  )
                  .refine((p) => !p.split('/').includes('..'), 'may not contain ".."'),
                /**
                 * What the sandbox gets: the credential's fields put into a string, `{field}` as is and
                 * `{field:url}` percent-encoded, e.g. `postgresql://{username:url}:{password:url}@db:5432/orders`.
                 * @defaultValue the fields as JSON (`{"username":…,"password":…}`)
                 */
                format: z.string().min(1).optional(),
              })
              .strict()
              .optional(),
            /**
             * Where the value may be used, for `inject`: the egress proxy swaps a job's placeholder
             * for the value only in requests to these hosts (`host`, `host:port`, `*.domain`; port
             * 443 by default), only in `header` (shaped as `format`), and in the body only with
             * `body: true`. @defaultValue none (the secret can only be delivered)
             */
            binding: z
              .object({
                /** The hosts requests may carry the value to: `host`, `host:port` or `*.domain:port` (port 443 by default). */
                hosts: z
                  .array(z.string().regex(/^(\*\.)?[a-z0-9.-]+(:\d{1,5})?$/i, 'use host, host:port or *.domain:port'))
                  .min(1),
                /** The request header that carries the placeholder. @defaultValue `"authorization"` */
                header: z
                  .string()
                  .regex(/^[A-Za-z0-9-]+$/)
                  .default('authorization'),
                /** The header's whole value, `{value}` standing for the secret. @defaultValue `"Bearer {value}"` */
                format: z.string().includes('{value}', { message: 'must contain {value}' }).default('Bearer {value}'),
                /** Also swap placeholders in request bodies to these hosts. @defaultValue false */
                body: z.boolean().default(false),
              })
              .strict()
              .optional(),
          })
          .strict(),
      )
      .default({}),
    /** The development store: an AES-256-GCM encrypted file under dataDir, its key beside it. */
    local: z
      .object({
        /** Encrypted store, relative to dataDir. @defaultValue `"secrets.enc.json"` */
        file: z.string().default('secrets.enc.json'),
        /** Generated master key (mode 0600), relative to dataDir. @defaultValue `"master.key"` */
        keyFile: z.string().default('master.key'),
        /** Env var with a base64 32-byte master key; wins over keyFile. @defaultValue `"FLEET_MASTER_KEY"` */
        masterKeyEnv: z.string().default('FLEET_MASTER_KEY'),
        /** Versions of each secret kept in the store. @defaultValue 5 */
        keepVersions: z.number().int().min(1).default(5),
      })
      .strict()
      .prefault({}),
    /** HashiCorp Vault or OpenBao (KV v2): per-job tokens, dynamic credentials. Only `fleet vault setup`'s roles are needed. */
    vault: z
      .object({
        /** `https://…` (or `http://` on loopback only: `fleet doctor --production` fails it elsewhere). @defaultValue `$VAULT_ADDR` */
        address: z.string().optional(),
        /**
         * TLS toward Vault, for an `https://` address. Environment: the Vault CLI's own
         * `VAULT_CACERT`, `VAULT_CLIENT_CERT`, `VAULT_CLIENT_KEY`, `VAULT_TLS_SERVER_NAME`
         * (`VAULT_SKIP_VERIFY` is ignored: verification is always on). @defaultValue Node's bundled
         * roots, no client certificate
         */
        tls: tlsClientSchema.optional(),
        /** KV v2 mount. @defaultValue `"secret"` */
        mount: z.string().default('secret'),
        /** Folder under the mount. @defaultValue `"fleet"` */
        prefix: z.string().default('fleet'),
        /** `approle` for production; `token` reads a token from `tokenEnv` (dev). @defaultValue `"approle"` */
        auth: z.enum(['approle', 'token']).default('approle'),
        /** Environment variable holding the token of `auth: "token"`. @defaultValue `"VAULT_TOKEN"` */
        tokenEnv: z.string().default('VAULT_TOKEN'),
        /** Environment variable holding the supervisor's AppRole role id (`…_FILE` reads it from a file). @defaultValue `"VAULT_ROLE_ID"` */
        roleIdEnv: z.string().default('VAULT_ROLE_ID'),
        /** Environment variable holding the supervisor's AppRole secret id (`…_FILE` reads it from a file). @defaultValue `"VAULT_SECRET_ID"` */
        secretIdEnv: z.string().default('VAULT_SECRET_ID'),
        /** Mount path of the AppRole auth method. @defaultValue `"approle"` */
        approleMount: z.string().default('approle'),
        /** The scheduler role's AppRole (`fleet-rotator`, written by `fleet vault setup`). @defaultValue `"VAULT_ROTATOR_ROLE_ID"` */
        rotatorRoleIdEnv: z.string().default('VAULT_ROTATOR_ROLE_ID'),
        /** The secret id of the scheduler's AppRole. @defaultValue `"VAULT_ROTATOR_SECRET_ID"` */
        rotatorSecretIdEnv: z.string().default('VAULT_ROTATOR_SECRET_ID'),
        /** The token role job tokens are minted through. @defaultValue `"fleet-job"` */
        tokenRole: z.string().default('fleet-job'),
        /** Prefix of each job type's Vault policy (`fleet-job-<type>`). @defaultValue `"fleet-job-"` */
        policyPrefix: z.string().default('fleet-job-'),
        /** Job tokens outlive the job's timeout by this much. @defaultValue 30000 */
        tokenTtlMarginMs: z.number().int().min(0).default(30_000),
        /** `num_uses` of a job token per declared secret. @defaultValue 4 */
        readsPerSecret: z.number().int().min(1).default(4),
        /**
         * Job tokens minted ahead per job type, so a job start pays one Vault read instead of a
         * token mint and a read. A spare carries exactly the type's policy, is used by one job
         * only, and is revoked unused when it gets older than tokenTtlMarginMs (the job would
         * otherwise get less than its timeout) or at shutdown. 0 (or tokenTtlMarginMs 0) mints at job
         * start. @defaultValue 1
         */
        spareTokens: z.number().int().min(0).max(16).default(1),
        /** Timeout of each request to Vault. @defaultValue 5000 */
        requestTimeoutMs: z.number().int().positive().default(5000),
      })
      .strict()
      .optional(),
    /**
     * Programs for the `exec` provider, by name (the `provider` each is sent): secrets kept in
     * 1Password (`op`), Bitwarden Secrets Manager (`bws`), `sops`, `pass` or any store with a CLI.
     * Read-only: values are set and rotated in the program's own store. @defaultValue none
     */
    exec: z.record(z.string().regex(EXEC_PROGRAM_NAME), execProgramSchema).optional(),
    /** AWS KMS envelope encryption: values sealed under data keys from `GenerateDataKey`, stored in Redis. Credentials from the AWS SDK's usual chain. */
    kms: z
      .object({
        /** Key id, ARN or alias of the customer master key. */
        keyId: z.string().min(1),
        /** The key's AWS region. @defaultValue `$AWS_REGION` or `"us-east-1"` */
        region: z.string().optional(),
        /** A local KMS-API server (moto, local-kms). @defaultValue AWS */
        endpoint: z.string().optional(),
        /** The scheduler turns on KMS automatic rotation of the customer key at start. @defaultValue true */
        enableKeyRotation: z.boolean().default(true),
        /** Versions of each secret kept (older envelopes are deleted on a new version). @defaultValue 5 */
        keepVersions: z.number().int().min(1).default(5),
        /** Timeout of each KMS call. @defaultValue 5000 */
        requestTimeoutMs: z.number().int().positive().default(5000),
      })
      .strict()
      .optional(),
    /** The data key that seals the job data of types with `encryptData`. */
    dataKey: z
      .object({
        /**
         * The secret holding it (provider as for any secret: `items` or the default). Created (32
         * random bytes) on first use where the identity may write it: the local store, the scheduler
         * with KMS, `fleet vault setup` with Vault. Rotate it like any secret, with a `random`
         * rotator in `secrets.items.<name>.rotation`: the previous version stays readable for the
         * rotation's `graceSeconds` and is retired only once no stored job is sealed under it. No
         * job type may declare it. @defaultValue `"fleet-data-key"`
         */
        name: z.string().regex(SECRET_NAME).default('fleet-data-key'),
        /** How often producers and supervisors look up its current version (a rotation takes effect within this). @defaultValue 60 */
        refreshSeconds: z.number().int().min(1).max(3600).default(60),
      })
      .strict()
      .prefault({}),
    /**
     * AWS Secrets Manager (provider `"secrets-manager"`). Each fleet secret is the Secrets Manager
     * secret `namePrefix + name`; jobs read its `AWSCURRENT` version, and rotation moves the native
     * staging labels (`AWSPENDING` → `AWSCURRENT`, the old version keeping `AWSPREVIOUS` through
     * the grace window), as AWS's own rotation does. Credentials come from the AWS SDK's usual
     * chain (environment, shared files, instance or task role).
     */
    secretsManager: z
      .object({
        /** The secrets' AWS region. @defaultValue `$AWS_REGION` or `"us-east-1"` */
        region: z.string().optional(),
        /** A local Secrets-Manager-API server (moto). @defaultValue AWS */
        endpoint: z.string().optional(),
        /**
         * Prepended to every secret name; the IAM policy grants `secret:<namePrefix>*` and
         * `fleet secrets list` shows only names under it. @defaultValue `"fleet/"`
         */
        namePrefix: z
          .string()
          .regex(
            /^[A-Za-z0-9/_+=.@-]*$/,
            'use the characters Secrets Manager allows in names: A-Z a-z 0-9 / _ + = . @ -',
          )
          .default('fleet/'),
        /** The KMS key `fleet secrets set` creates new secrets under. @defaultValue the account's `aws/secretsmanager` key */
        kmsKeyId: z.string().min(1).optional(),
        /**
         * `fleet secrets delete`: days the secret stays restorable (7–30), or 0 to delete it at
         * once without recovery. @defaultValue 30
         */
        recoveryWindowDays: z
          .number()
          .int()
          .refine((d) => d === 0 || (d >= 7 && d <= 30), 'use 0 (delete at once, no recovery) or 7 to 30 days')
          .default(30),
        /** Timeout of each Secrets Manager call. @defaultValue 5000 */
        requestTimeoutMs: z.number().int().positive().default(5000),
      })
      .strict()
      .prefault({}),
    /** The audit trail: its retention, MAC key, export and checks (see docs/secrets.md, "Audit"). */
    audit: z
      .object({
        /** Audit stream retention: the scheduler trims to this many records (once 10% over), leaving a signed checkpoint. @defaultValue 100000 */
        maxEntries: z.number().int().positive().default(100_000),
        /**
         * The secret holding the audit trail's MAC key (provider as for any secret: `items` or the
         * default). Created on first start where the identity may write it (the local store), else
         * by `fleet audit init-key` / `fleet vault setup`. No job type may declare it. @defaultValue `"audit-mac-key"`
         */
        macKey: z.string().regex(SECRET_NAME).default('audit-mac-key'),
        /** Also write every sealed record as a JSON line to this file (appended; relative to the config) or `"-"` (stdout), for a log shipper or SIEM. @defaultValue none */
        export: z.string().min(1).optional(),
        /** How often each supervisor verifies the newest records of the chain (and its own head). @defaultValue 60000 */
        verifyEveryMs: z.number().int().min(1000).default(60_000),
        /** How many of the newest records that check covers. @defaultValue 2000 */
        verifyTail: z.number().int().min(10).default(2000),
        /** How often the scheduler's retention pass runs. @defaultValue 60000 */
        retentionEveryMs: z.number().int().min(500).default(60_000),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export const fleetConfigSchema = z
  .object({
    /** Folder for the embedded Redis, generated keys and local secrets. @defaultValue `".fleet"` */
    dataDir: z.string().default('.fleet'),
    /** The Redis every role shares (jobs, audit trail, rotation state). */
    redis: z
      .object({
        /**
         * `redis://…`, `rediss://…` (TLS), `redis-cluster://h1:p1,h2:p2` or `rediss-cluster://…`;
         * unset means `npm start` runs a private redis-server. @defaultValue `$REDIS_URL`
         */
        url: z.string().optional(),
        /**
         * TLS toward Redis, used by every connection of every role when the URL is `rediss://` or
         * `rediss-cluster://` (and refused with a plain URL). Environment: `REDIS_TLS_CA_FILE`,
         * `REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE`, `REDIS_TLS_SERVERNAME`. @defaultValue Node's
         * bundled roots, no client certificate
         */
        tls: tlsClientSchema.optional(),
        /** Key prefix of every key the fleet writes; each job type's keys sit under the hash tag `{type}` (Redis Cluster ready). @defaultValue `"fleet"` */
        prefix: z
          .string()
          .regex(/^[A-Za-z0-9_-]+$/)
          .default('fleet'),
      })
      .strict()
      .default({ prefix: 'fleet' }),
    /** The HTTP API (`fleet start --role api`). */
    api: z
      .object({
        /** The interface the API listens on. @defaultValue `"127.0.0.1"` */
        host: z.string().default('127.0.0.1'),
        /** Its port; 0 picks a free one. @defaultValue 8080 */
        port: z.number().int().min(0).max(65535).default(8080),
        /**
         * Serve HTTPS with this certificate and key (PEM, relative to the config; read at start, a
         * new certificate takes a restart). Environment: `FLEET_API_TLS_CERT_FILE`,
         * `FLEET_API_TLS_KEY_FILE`. Without it the API speaks plain HTTP: keep it on loopback or
         * behind a TLS-terminating proxy. @defaultValue none (HTTP)
         */
        tls: z
          .object({
            /** Certificate chain (PEM): the server's certificate first. @defaultValue `$FLEET_API_TLS_CERT_FILE` */
            certFile: z.string().min(1).optional(),
            /** Its unencrypted private key (PEM). @defaultValue `$FLEET_API_TLS_KEY_FILE` */
            keyFile: z.string().min(1).optional(),
          })
          .strict()
          .optional(),
        /** Largest accepted request body. @defaultValue 1048576 */
        bodyLimitBytes: z
          .number()
          .int()
          .positive()
          .default(1024 * 1024),
        /** Most jobs in one batch request. @defaultValue 1000 */
        maxBatchSize: z.number().int().positive().default(1000),
        /** Deepest nesting of arrays/objects a JSON body may have (checked on the raw bytes, before parsing); deeper gets 400 PAYLOAD_TOO_DEEP. @defaultValue 100 */
        maxJsonDepth: z.number().int().min(1).max(10_000).default(100),
        /** Bull Board, the queue UI: admin producers only, masked. */
        bullBoard: z
          .object({
            /** Serve Bull Board on the API (admin producers only). @defaultValue true */
            enabled: z.boolean().default(true),
            /** Where on the API it is served. @defaultValue `"/admin/queues"` */
            path: z
              .string()
              .regex(/^\/[A-Za-z0-9/_-]+$/)
              .default('/admin/queues'),
            /** No retries, removals or cleaning from the UI. @defaultValue true */
            readOnly: z.boolean().default(true),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    /** Each worker and scheduler process: its metrics port, shutdown, sandbox layers and egress proxy. */
    supervisor: z
      .object({
        /** Port of this supervisor's `/metrics` and `/healthz`; 0 picks a free one. @defaultValue 9464 */
        metricsPort: z.number().int().min(0).max(65535).default(9464),
        /** The interface of `/metrics` and `/healthz` (plain HTTP: counters, never secrets). @defaultValue `"127.0.0.1"` */
        metricsHost: z.string().default('127.0.0.1'),
        /** On SIGTERM, running jobs get this long to finish before they are cancelled and returned to wait. @defaultValue 30000 */
        shutdownDeadlineMs: z.number().int().min(0).default(30_000),
        /** How often liveness is written to Redis for `fleet status`. @defaultValue 5000 */
        heartbeatMs: z.number().int().positive().default(5000),
        /** Job lock; a supervisor that dies (SIGKILL, power loss) releases its jobs after this. @defaultValue 30000 */
        lockDurationMs: z.number().int().min(1000).default(30_000),
        /** How often stalled jobs (of dead supervisors) are looked for. @defaultValue 30000 */
        stalledIntervalMs: z.number().int().min(500).default(30_000),
        /**
         * How many times a job may be found stalled (its supervisor died, or could not renew the
         * lock) and returned to wait before it fails with "job stalled more than allowable limit".
         * A stall is not an attempt; raise this where supervisors are killed often (spot
         * instances, chaos tests). @defaultValue 1
         */
        maxStalledCount: z.number().int().min(0).default(1),
        /**
         * The OS layer of process sandboxes (Linux namespaces through bubblewrap). `auto`: used when
         * it works here, otherwise the supervisor says why and runs without it. `required`: start-up
         * fails without it. `off`: never (the permission model alone). @defaultValue `"auto"`
         */
        osLayer: z.enum(['auto', 'required', 'off']).default('auto'),
        /**
         * CPU priority (nice, 0–19) of the sandboxes, below the supervisor's: handing a job to an
         * idle sandbox then does not preempt the supervisor's dispatch and lock renewal on a busy
         * host, and they get the CPU ahead of a CPU-bound job; jobs still get every idle cycle. 0 runs
         * them at the supervisor's priority. @defaultValue 10
         */
        sandboxNice: z.number().int().min(0).max(19).default(10),
        /**
         * The kernel's caps on each process sandbox: a cgroup (memory, processes, CPU), rlimits (no
         * core dumps, descriptors, file size) and a seccomp filter. `auto`: what this host allows,
         * and the supervisor says which are missing and why. `required`: start-up fails without all
         * of them. `off`: none. @defaultValue `"auto"`
         */
        resourceLimits: z.enum(['auto', 'required', 'off']).default('auto'),
        /** The bubblewrap binary. @defaultValue `"bwrap"` (from PATH) */
        bwrapPath: z.string().default('bwrap'),
        /**
         * Extra CA certificates (PEM file, relative to the config) the egress proxy trusts for its
         * own upstream TLS connections when it injects secrets, besides Node's bundled roots: a
         * private service's CA. @defaultValue none
         */
        upstreamCaFile: z.string().min(1).optional(),
        /** Largest request body the egress proxy buffers to look for placeholders. @defaultValue 16777216 */
        injectMaxBodyBytes: z
          .number()
          .int()
          .positive()
          .default(16 * 1024 * 1024),
      })
      .strict()
      .prefault({}),
    /** Where secrets come from, per-secret settings, the audit trail and the data key. */
    secrets: secretsSchema.prefault({}),
    /** Who may enqueue. Empty: `npm start` generates a dev token into dataDir and prints where. */
    producers: z.array(producerSchema).default([]),
    /** The kinds of job the fleet runs, each with its processor, limits and secrets. */
    jobTypes: z.array(jobTypeSchema).min(1, 'declare at least one job type'),
  })
  .strict();

export type FleetConfigInput = z.input<typeof fleetConfigSchema>;
export type JobTypeInput = z.input<typeof jobTypeSchema>;
