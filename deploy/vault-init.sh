#!/bin/sh
# One-shot: write the Redis ACL users (one per fleet role) and configure the dev Vault for the
# fleet (policies, token role, AppRoles, the audit MAC key), hand each service its credentials
# through a shared volume, and seed example secrets. REDIS_URL here carries the Redis admin.
set -eu
CREDS=/run/fleet-vault
node bin/fleet.js redis setup --json > /tmp/redis.json
node -e "
const fs = require('fs'); const s = JSON.parse(fs.readFileSync('/tmp/redis.json', 'utf8'));
for (const [role, c] of Object.entries(s.credentials)) fs.writeFileSync('$CREDS/redis-' + role, c.password, { mode: 0o644 });"
rm -f /tmp/redis.json
until node -e "fetch(process.env.VAULT_ADDR + '/v1/sys/health').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"; do sleep 1; done
node bin/fleet.js vault setup --json > /tmp/setup.json
node -e "
const fs = require('fs'); const s = JSON.parse(fs.readFileSync('/tmp/setup.json', 'utf8'));
for (const [f, v] of [['role-id', s.roleId], ['secret-id', s.secretId], ['rotator-role-id', s.rotator.roleId], ['rotator-secret-id', s.rotator.secretId]])
  fs.writeFileSync('$CREDS/' + f, v, { mode: 0o644 });"
rm -f /tmp/setup.json
# The KMS key the config names (alias/fleet), created once per KMS server (moto keeps keys in memory).
node bin/fleet.js kms ensure-key
# Example secrets (values generated here, never in the repo).
node -e "process.stdout.write(require('crypto').randomBytes(32).toString('hex'))" | node bin/fleet.js secrets set webhook-signing-key --provider vault
node -e "process.stdout.write(require('crypto').randomBytes(32).toString('base64'))" | node bin/fleet.js secrets set payload-encryption-key --provider kms
echo "vault-init: done"
