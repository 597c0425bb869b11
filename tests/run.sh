#!/usr/bin/env bash
# Runs every test: unit tests, the integration tests against SQS in moto, and the built
# `ingest` binary under `cargo lambda watch`. Installs what they need on first use (a Python
# virtualenv with moto and cargo-lambda), starts moto on 127.0.0.1, and stops it afterwards.
# Extra arguments go to `cargo test` (e.g. `bash tests/run.sh -p shared`).
set -euo pipefail
source "$(dirname "$0")/../.ci/tools.sh"
cd "$CKS_ROOT"

ensure_pinned_toolchain
ensure_tools
start_moto "$(free_port)"
trap stop_moto EXIT

cargo test --workspace --locked "$@"
