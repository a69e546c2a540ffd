import { FleetError, toError } from '../errors.js';
import { loadConfig } from '../config/load.js';
import { parseCommandLine, type Command, type Io } from './command.js';
import { doctorCommand } from './doctor/doctor.js';
import { enqueueCommand, jobCommand, statusCommand } from './job-commands.js';
import { kmsCommand, rotateCommand } from './rotation-commands.js';
import { secretsCommand, vaultCommand } from './secrets-commands.js';
import { startCommand } from './start-command.js';
import { auditCommand, redisCommand } from './trail-commands.js';

const USAGE = `fleet — sandboxed job fleet on BullMQ

Usage:
  fleet start [--role api|worker|scheduler|all] [--metrics-port N]
                                           run the fleet (default role: all); --metrics-port or
                                           FLEET_METRICS_PORT overrides supervisor.metricsPort (0: a free port)
  fleet enqueue <type> <json> [--idempotency-key K]
  fleet job <id>                           state, attempts, timings, result or error
  fleet status [--workers] [--secrets]     supervisors, sandboxes, queue depths; secrets and their use
  fleet secrets set <name> [--provider P]  store a new version; the value is read from stdin
  fleet secrets list | delete <name>
  fleet audit [--since 24h] [--secret X] [--denied] [--limit N]
  fleet audit verify [--since 24h] [--file F]
                                           check the audit MAC chain (Redis, or an exported file);
                                           exits 1 at a deleted, inserted, edited or reordered record
  fleet audit export [--since 24h]         the audit stream as JSON lines with MACs (stdout)
  fleet audit init-key                     create the audit MAC key (secrets.audit.macKey) if missing
  fleet redis setup [--role R]... [--keep-old | --drop-old]
                                           write the per-role ACL users (admin REDIS_URL) and print
                                           their passwords; --keep-old keeps current passwords valid
                                           (rotation), --drop-old then removes them
  fleet redis rules                        the ACL rules of each role, as ACL SETUSER lines
  fleet vault setup                        write Vault policies, token role and AppRoles (admin VAULT_TOKEN)
  fleet rotate <secret> [--now]            rotate outside the schedule (--now: wait for the result)
  fleet kms rotate-key                     rotate the KMS customer key now (RotateKeyOnDemand)
  fleet kms ensure-key                     create the key secrets.kms.keyId names, when it is an alias to no key
  fleet doctor [--production] [--metrics-url U]... [--prometheus-url U]
                                           pre-deploy checklist; exits 1 if any check FAILs

Options:
  --config <path>   config file (default: $FLEET_CONFIG or ./fleet.config.{ts,js,mjs,json})
  --json            machine-readable output
  -h, --help        this text`;

/** Each command by its name on the command line; each group's code lives in its own module. */
const COMMANDS: Readonly<Record<string, Command>> = {
  start: startCommand,
  enqueue: enqueueCommand,
  job: jobCommand,
  status: statusCommand,
  secrets: secretsCommand,
  audit: auditCommand,
  rotate: rotateCommand,
  kms: kmsCommand,
  doctor: doctorCommand,
  redis: redisCommand,
  vault: vaultCommand,
};

/** Runs the CLI; resolves with the exit code. `start` resolves only after shutdown. */
export async function main(
  argv: string[],
  io: Io = { out: (s) => process.stdout.write(`${s}\n`), err: (s) => process.stderr.write(`${s}\n`) },
): Promise<number> {
  let parsed;
  try {
    parsed = parseCommandLine(argv);
  } catch (err) {
    io.err(`${toError(err).message}\n\n${USAGE}`);
    return 2;
  }
  const { values: opts, positionals } = parsed;
  const [command, ...args] = positionals;
  if (opts.help || !command) {
    io.out(USAGE);
    return command || opts.help ? 0 : 2;
  }
  const print = (human: string, data: unknown): void => io.out(opts.json ? JSON.stringify(data) : human);

  try {
    const config = await loadConfig(opts.config ? { path: opts.config } : {});
    const run = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
    if (!run) {
      io.err(`unknown command "${command}"\n\n${USAGE}`);
      return 2;
    }
    return await run({ config, opts, args, io, print });
  } catch (err) {
    const e = toError(err);
    const code = err instanceof FleetError ? err.code : 'INTERNAL';
    if (opts.json)
      io.err(
        JSON.stringify({
          error: {
            code,
            message: e.message,
            ...(err instanceof FleetError && err.details ? { details: err.details } : {}),
          },
        }),
      );
    else
      io.err(
        `error [${code}]: ${e.message}${err instanceof FleetError && err.details ? `\n${JSON.stringify(err.details, null, 2)}` : ''}`,
      );
    return 1;
  }
}
