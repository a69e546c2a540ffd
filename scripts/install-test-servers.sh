#!/usr/bin/env bash
# Installs the real servers the test suite talks to, caching builds outside the repo.
#   redis-server, prometheus, bubblewrap, chromium, postgresql   Debian packages
#   bao (OpenBao v2.4.0, Vault's HTTP API) built from the Go module proxy
#   moto_server (moto[server], serves the AWS KMS and Secrets Manager APIs) in a virtualenv
#   st (schemathesis, contract fuzzing of the HTTP API) in a virtualenv
#   compose-check (compose-go, the Docker Compose loader) built from the Go module proxy
#   docker compose v2 (the CLI plugin) built from the Go module proxy
# Re-running is cheap: each step is skipped when its binary is already cached.
set -euo pipefail
# Resolved before any `cd`: a relative $0 means nothing once the OpenBao build has left the repo.
repo_dir="$(cd "$(dirname "$0")/.." && pwd)"

CACHE_DIR="${FLEET_SERVERS_CACHE:-$HOME/.cache/fleet-test-servers}"
# OpenBao (the Vault fork, same HTTP API). Its v2 tags are not valid versions of its module
# path, so the v2.4.0 tag is pinned by its pseudo-version.
OPENBAO_VERSION="${FLEET_OPENBAO_VERSION:-v0.0.0-20250828202315-f9407a27fbee}"
MOTO_VERSION="${FLEET_MOTO_VERSION:-5.2.5}"
mkdir -p "$CACHE_DIR/bin"
log() { printf '[install-test-servers] %s\n' "$*"; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v prometheus   >/dev/null 2>&1 || need_apt+=(prometheus)
# bwrap: the OS layer of process sandboxes (user, PID, mount, IPC and network namespaces).
command -v bwrap        >/dev/null 2>&1 || need_apt+=(bubblewrap)
# chromium: the real browser the Bull Board test drives (through playwright-core).
command -v chromium     >/dev/null 2>&1 || need_apt+=(chromium)
# postgresql: the database whose per-job users OpenBao's database engine creates and drops.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  log "apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The Debian packages start system services we do not use; tests start their own instances.
for svc in redis-server prometheus prometheus-node-exporter postgresql; do
  (systemctl stop "$svc" && systemctl disable "$svc") >/dev/null 2>&1 || true
done

export GOFLAGS=-mod=mod GOTOOLCHAIN=local
if [ ! -x "$CACHE_DIR/bin/bao" ]; then
  log "building OpenBao $OPENBAO_VERSION from the Go module proxy (several minutes, once)"
  work=$(mktemp -d)
  src=$(cd "$work" && go mod download -json "github.com/openbao/openbao@$OPENBAO_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$src" ] || { log "could not download github.com/openbao/openbao@$OPENBAO_VERSION"; exit 1; }
  cp -r "$src" "$work/openbao" && chmod -R u+w "$work/openbao"
  cd "$work/openbao"
  # The module zip lacks its sibling modules (./api, ./sdk): use the versions published from the
  # same release instead of the local replace lines.
  go mod edit \
    -replace=github.com/openbao/openbao/api/v2=github.com/openbao/openbao/api/v2@v2.4.0 \
    -replace=github.com/openbao/openbao/sdk/v2=github.com/openbao/openbao/sdk/v2@v2.4.0 \
    -replace=github.com/openbao/openbao/api/auth/approle/v2=github.com/openbao/openbao/api/auth/approle/v2@v2.0.0 \
    -replace=github.com/openbao/openbao/api/auth/userpass/v2=github.com/openbao/openbao/api/auth/userpass/v2@v2.0.0 \
    -replace=github.com/openbao/openbao/api/auth/kubernetes/v2=github.com/openbao/openbao/api/auth/kubernetes/v2@v2.0.1
  if go build -trimpath -o "$CACHE_DIR/bin/bao" .; then :; else
    log "WARNING: building OpenBao failed; the Vault tests will be skipped with this reason"
    echo "go build of github.com/openbao/openbao@$OPENBAO_VERSION failed (see CI log)" >"$CACHE_DIR/bao.failed"
  fi
  cd "$repo_dir" && rm -rf "$work"
fi

if [ ! -x "$CACHE_DIR/moto/bin/moto_server" ]; then
  # local-kms is not served by this machine's Go module proxy; moto serves the same KMS API.
  log "installing moto[server] $MOTO_VERSION (KMS API) into $CACHE_DIR/moto"
  python3 -m venv "$CACHE_DIR/moto"
  "$CACHE_DIR/moto/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" ||
    log "WARNING: installing moto failed; the KMS tests will be skipped with this reason"
fi
ln -sf "$CACHE_DIR/moto/bin/moto_server" "$CACHE_DIR/bin/moto_server"

SCHEMATHESIS_VERSION="${FLEET_SCHEMATHESIS_VERSION:-4.32.5}"
if [ ! -x "$CACHE_DIR/schemathesis/bin/st" ]; then
  # Schemathesis: the third-party contract fuzzer run against the live API by the tests.
  log "installing schemathesis $SCHEMATHESIS_VERSION into $CACHE_DIR/schemathesis"
  python3 -m venv "$CACHE_DIR/schemathesis"
  "$CACHE_DIR/schemathesis/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
    log "WARNING: installing schemathesis failed; the contract fuzzing test will be skipped with this reason"
fi

# compose-check: docker-compose.yml loaded by compose-go (the loader Docker Compose uses), built
# from test/compose-check; rebuilt when its go.sum changes.
cc_sum="$(sha256sum "$repo_dir/test/compose-check/go.sum" "$repo_dir/test/compose-check/main.go" | sha256sum | cut -c1-16)"
if [ ! -x "$CACHE_DIR/bin/compose-check" ] || [ "$(cat "$CACHE_DIR/compose-check.sum" 2>/dev/null)" != "$cc_sum" ]; then
  log "building compose-check (compose-go) from the Go module proxy"
  if (cd "$repo_dir/test/compose-check" && go build -trimpath -o "$CACHE_DIR/bin/compose-check" .); then
    echo "$cc_sum" >"$CACHE_DIR/compose-check.sum"
  else
    log "WARNING: building compose-check failed; the compose-go test will be skipped with this reason"
  fi
fi

# docker compose v2 (the CLI plugin `npm run test:compose` drives): Debian's docker.io has none, so
# it is built from the Go module proxy and linked into ~/.docker/cli-plugins.
COMPOSE_VERSION="${FLEET_COMPOSE_VERSION:-v2.32.4}"
if [ ! -x "$CACHE_DIR/bin/docker-compose" ] || [ "$(cat "$CACHE_DIR/docker-compose.version" 2>/dev/null)" != "$COMPOSE_VERSION" ]; then
  log "building docker compose $COMPOSE_VERSION from the Go module proxy (several minutes, once)"
  if GOBIN="$CACHE_DIR/gobin" go install "github.com/docker/compose/v2/cmd@$COMPOSE_VERSION"; then
    mv "$CACHE_DIR/gobin/cmd" "$CACHE_DIR/bin/docker-compose" && rm -rf "$CACHE_DIR/gobin"
    echo "$COMPOSE_VERSION" >"$CACHE_DIR/docker-compose.version"
  else
    log "WARNING: building docker compose failed; npm run test:compose will skip with this reason"
  fi
fi
if [ -x "$CACHE_DIR/bin/docker-compose" ]; then
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$CACHE_DIR/bin/docker-compose" "$HOME/.docker/cli-plugins/docker-compose"
fi

log "ready in $CACHE_DIR/bin: $(ls "$CACHE_DIR/bin" | tr '\n' ' ')"
