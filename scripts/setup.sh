#!/usr/bin/env bash
# Install what cryopod's build, demo and tests need, then build everything.
# Safe to run again. Needs root (apt-get) on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."

# The build and the engine's tests.
base=(python3 bash coreutils gcc procps busybox-static iproute2)
# The real servers of testprogs/tests/servers.rs and their load generators.
servers=(redis-server redis-tools nginx-light apache2-utils wrk postgresql-15 postgresql-client-15
    openjdk-17-jdk-headless nodejs util-linux)
need=()
for tool in python3 bash sleep gcc busybox ip \
    redis-server redis-cli redis-benchmark nginx wrk ab pgbench psql javac java node setpriv \
    /usr/lib/postgresql/15/bin/postgres /usr/lib/postgresql/15/bin/initdb; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ "${#need[@]}" -gt 0 ] || [ "${CRYOPOD_APT:-}" = 1 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        # Packages' services (nginx, postgresql, redis) are not started:
        # the tests run their own servers in pods.
        policy=/usr/sbin/policy-rc.d
        added=
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added=1
        fi
        status=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${base[@]}" "${servers[@]}" >/dev/null || status=$?
        if [ -n "$added" ]; then rm -f "$policy"; fi
        if [ "$status" -ne 0 ]; then
            echo "setup: apt-get install failed (missing: ${need[*]})" >&2
            exit 1
        fi
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
