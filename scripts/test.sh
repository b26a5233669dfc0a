#!/usr/bin/env bash
# The whole test suite: format and lint checks, unit tests, and the
# integration tests that checkpoint and restore real processes (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --quiet -- --test-threads=1
