# The Node.js releases fleet is tested on: the one place they are pinned. Sourced by
# scripts/install-node.sh and .ci/run. The first is the Active LTS that CI runs first.
FLEET_NODE_VERSIONS=(26.10.0 24.21.0)
# The oldest line fleet supports (engines.node >= 22.14); CI runs the fast subset on it.
FLEET_NODE_FLOOR_VERSION=22.23.3
