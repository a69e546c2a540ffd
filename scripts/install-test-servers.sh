#!/usr/bin/env bash
# Installs the real servers the test suite talks to, caching builds outside the repo.
#   redis-server, prometheus      Debian packages
#   bao (OpenBao v2.4.0, Vault's HTTP API) built from the Go module proxy
#   local-kms (nsmithuk/local-kms) built with `go install`
# Re-running is cheap: each step is skipped when its binary is already cached.
set -euo pipefail

CACHE_DIR="${FLEET_SERVERS_CACHE:-$HOME/.cache/fleet-test-servers}"
# OpenBao (the Vault fork, same HTTP API). Its v2 tags are not valid versions of its module
# path, so the v2.4.0 tag is pinned by its pseudo-version.
OPENBAO_VERSION="${FLEET_OPENBAO_VERSION:-v0.0.0-20250828202315-f9407a27fbee}"
LOCAL_KMS_VERSION="${FLEET_LOCAL_KMS_VERSION:-v3.12.0+incompatible}"
mkdir -p "$CACHE_DIR/bin"
log() { printf '[install-test-servers] %s\n' "$*"; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v prometheus   >/dev/null 2>&1 || need_apt+=(prometheus)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  log "apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The Debian packages start system services we do not use; tests start their own instances.
for svc in redis-server prometheus prometheus-node-exporter; do
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
  cd / && rm -rf "$work"
fi

if [ ! -x "$CACHE_DIR/bin/local-kms" ]; then
  log "building local-kms $LOCAL_KMS_VERSION"
  GOBIN="$CACHE_DIR/bin" go install "github.com/nsmithuk/local-kms@$LOCAL_KMS_VERSION" ||
    log "WARNING: building local-kms failed; the KMS tests will be skipped with this reason"
fi

log "ready in $CACHE_DIR/bin: $(ls "$CACHE_DIR/bin" | tr '\n' ' ')"
