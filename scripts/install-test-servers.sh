#!/usr/bin/env bash
# Installs the real servers the test suite talks to, caching builds outside the repo.
#   redis-server, prometheus      Debian packages
#   vault (HashiCorp Vault 1.14.10, the last MPL release) built from the Go module proxy
#   local-kms (nsmithuk/local-kms) built with `go install`
# Re-running is cheap: each step is skipped when its binary is already cached.
set -euo pipefail

CACHE_DIR="${FLEET_SERVERS_CACHE:-$HOME/.cache/fleet-test-servers}"
VAULT_VERSION="${FLEET_VAULT_VERSION:-v1.14.10}"
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
if [ ! -x "$CACHE_DIR/bin/vault" ]; then
  log "building vault $VAULT_VERSION from the Go module proxy (several minutes, once)"
  work=$(mktemp -d)
  (cd "$work" && go mod download -json "github.com/hashicorp/vault@$VAULT_VERSION" >mod.json)
  src=$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' "$work/mod.json")
  cp -r "$src" "$work/vault" && chmod -R u+w "$work/vault"
  cd "$work/vault"
  # The published module carries replace lines to sibling folders (./api, ./sdk) that are
  # separate modules and absent from the zip; use the versions go.mod requires instead.
  for r in $(go mod edit -json | sed -n 's/.*"Path": "\([^"]*\)".*/\1/p' | sort -u); do :; done
  go mod edit -json | python3 -c '
import json,sys
m=json.load(sys.stdin)
for r in m.get("Replace") or []:
    if r["New"]["Path"].startswith("."):
        print(r["Old"]["Path"])' | while read -r p; do go mod edit -dropreplace "$p"; done
  go build -trimpath -o "$CACHE_DIR/bin/vault" .
  cd / && rm -rf "$work"
fi

if [ ! -x "$CACHE_DIR/bin/local-kms" ]; then
  log "building local-kms $LOCAL_KMS_VERSION"
  GOBIN="$CACHE_DIR/bin" go install "github.com/nsmithuk/local-kms@$LOCAL_KMS_VERSION"
fi

log "ready in $CACHE_DIR/bin: $(ls "$CACHE_DIR/bin" | tr '\n' ' ')"
