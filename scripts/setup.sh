#!/usr/bin/env bash
# Install what cryopod's build, demo and tests need, then build everything.
# Safe to run again. Needs root (apt-get) on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in python3 bash sleep gcc busybox ip; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ "${#need[@]}" -gt 0 ] || [ "${CRYOPOD_APT:-}" = 1 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 bash coreutils gcc procps busybox-static iproute2 >/dev/null
    else
        echo "setup: missing ${need[*]} and no apt-get to install them" >&2
        exit 1
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is required (install Rust with rustup)" >&2
    exit 1
fi
cargo build --workspace --quiet
