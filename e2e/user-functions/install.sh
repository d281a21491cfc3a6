#!/usr/bin/env bash
# Installs the real Cloudstate user functions the end-to-end tests run as processes:
#
#   * Go:     two mains of github.com/cloudstateio/go-support v0.3.0, built from the module
#             proxy with the go.mod/go.sum in e2e/user-functions/go: the shopping cart
#             example (tck/cmd/tck_shoppingcart) and the TCK user function with the TCK models of
#             every entity kind (tck/cmd/tck_eventsourced).
#   * Python: a venv with PyPI cloudstate==0.1.1 (pinned, working on Python 3.11) and our
#             own shopping cart (e2e/user-functions/python/shoppingcart), its protos compiled
#             with grpcio-tools against the SDK's own cloudstate/entity_key.proto (50002).
#   * Python: a second venv for the journal consumer sample (samples/journal-consumer-python:
#             confluent-kafka + fastavro), which the e2e tests run against a real journal.
#
# Everything goes under ${STATEHOUSE_CACHE_DIR:-$HOME/.cache/statehouse}/user-functions/.
# Idempotent: each step is skipped when its inputs (hashed into a stamp file) are unchanged.
#
#   bash e2e/user-functions/install.sh          # install / refresh
#   bash e2e/user-functions/install.sh --force  # rebuild everything
#
# Env: STATEHOUSE_CACHE_DIR, STATEHOUSE_PYTHON (interpreter for the venv; default python3.11,
# else python3), GO (go binary; default go).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${STATEHOUSE_CACHE_DIR:-$HOME/.cache/statehouse}"
UF="$CACHE_ROOT/user-functions"
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h | --help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

GO_PKG="github.com/cloudstateio/go-support/tck/cmd/tck_shoppingcart"
GO_TCK_PKG="github.com/cloudstateio/go-support/tck/cmd/tck_eventsourced"
GO_DIR="$UF/go"
GO_BIN="$GO_DIR/go-shoppingcart"
GO_TCK_BIN="$GO_DIR/go-tck"
PY_DIR="$UF/python"
VENV="$PY_DIR/venv"
GEN="$PY_DIR/gen"
PROTO_SRC="$HERE/python/shoppingcart/proto"

log() { printf '[user-functions] %s\n' "$*"; }
die() { printf '[user-functions] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
hash_of() { sha256sum | cut -c1-64; }
# True when the stamp file $1 holds hash $2. It is then touched: test-support compares its mtime
# with the inputs' (a touched but unchanged input must not look stale forever).
stamp_ok() { [[ $FORCE == 0 && -f "$1" && "$(cat "$1")" == "$2" ]] && touch "$1"; }

mkdir -p "$GO_DIR" "$PY_DIR"
T_ALL="$(now)"

# ---- Go: go-support v0.3.0 shopping cart ---------------------------------------------------
GO="${GO:-go}"
command -v "$GO" >/dev/null || die "'$GO' not found: the Go user function needs a Go toolchain (>= 1.24)"
GO_HASH="$( { cat "$HERE/go/go.mod" "$HERE/go/go.sum"; "$GO" version; echo "$GO_PKG $GO_TCK_PKG"; } | hash_of)"
if [[ -x "$GO_BIN" && -x "$GO_TCK_BIN" ]] && stamp_ok "$GO_DIR/.stamp" "$GO_HASH"; then
  log "go: $GO_BIN and $GO_TCK_BIN are up to date (go-support v0.3.0)"
else
  t="$(now)"
  for pair in "$GO_PKG=$GO_BIN" "$GO_TCK_PKG=$GO_TCK_BIN"; do
    pkg="${pair%%=*}" bin="${pair#*=}"
    log "go: building $pkg@v0.3.0 -> $bin"
    # -mod=readonly: go.mod/go.sum are committed; the module proxy is only used to download.
    (cd "$HERE/go" && GOFLAGS="${GOFLAGS:-} -mod=readonly" "$GO" build -trimpath -o "$bin.tmp" "$pkg")
    mv -f "$bin.tmp" "$bin"
  done
  echo "$GO_HASH" > "$GO_DIR/.stamp"
  log "go: built in $(since "$t")"
fi

# ---- Python: venv with cloudstate==0.1.1 ---------------------------------------------------
if [[ -n "${STATEHOUSE_PYTHON:-}" ]]; then
  PY="$STATEHOUSE_PYTHON"
elif command -v python3.11 >/dev/null; then
  PY=python3.11
else
  PY=python3
fi
command -v "$PY" >/dev/null || die "'$PY' not found: the Python user function needs Python 3 (3.11 tested)"
VENV_HASH="$( { cat "$HERE/python/requirements.txt" "$HERE/python/requirements-nodeps.txt"; "$PY" -VV; } | hash_of)"
if [[ -x "$VENV/bin/python" ]] && stamp_ok "$PY_DIR/.venv-stamp" "$VENV_HASH"; then
  log "python: venv $VENV is up to date ($("$VENV/bin/python" -V), cloudstate 0.1.1)"
else
  t="$(now)"
  log "python: creating venv $VENV with $("$PY" -V) and the pinned requirements"
  rm -rf "$VENV" "$PY_DIR/.venv-stamp" "$PY_DIR/.gen-stamp"
  "$PY" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q)
  "${pip[@]}" -r "$HERE/python/requirements.txt"
  "${pip[@]}" --no-deps -r "$HERE/python/requirements-nodeps.txt"
  echo "$VENV_HASH" > "$PY_DIR/.venv-stamp"
  log "python: venv ready in $(since "$t")"
fi

# ---- Python: compile our protos ------------------------------------------------------------
GEN_HASH="$( { cat "$PY_DIR/.venv-stamp" "${BASH_SOURCE[0]}"; cd "$PROTO_SRC" && find . -name '*.proto' -print0 | sort -z | xargs -0 sha256sum; } | hash_of)"
if [[ -f "$GEN/shoppingcart/shoppingcart_pb2.py" ]] && stamp_ok "$PY_DIR/.gen-stamp" "$GEN_HASH"; then
  log "python: generated protos in $GEN are up to date"
else
  t="$(now)"
  log "python: compiling $PROTO_SRC -> $GEN"
  rm -rf "$GEN.tmp" && mkdir -p "$GEN.tmp"
  # The SDK ships cloudstate/entity_key.proto only compiled (cloudstate.entity_key_pb2, option
  # number 50002). Hand its exact descriptor to protoc, so our protos import the SDK's file and
  # the generated code imports the SDK's module.
  "$VENV/bin/python" - "$GEN.tmp/sdk-imports.pb" <<'PY'
import sys
from google.protobuf import descriptor_pb2
from cloudstate import entity_key_pb2

fds = descriptor_pb2.FileDescriptorSet()
for file in (descriptor_pb2.DESCRIPTOR, entity_key_pb2.DESCRIPTOR):
    fds.file.add().MergeFromString(file.serialized_pb)
with open(sys.argv[1], "wb") as out:
    out.write(fds.SerializeToString())
PY
  SITE="$("$VENV/bin/python" -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))')"
  WKT="$("$VENV/bin/python" -c 'import grpc_tools, os; print(os.path.join(grpc_tools.__path__[0], "_proto"))')"
  (cd "$PROTO_SRC" && find . -name '*.proto' | sed 's|^\./||' | sort) > "$GEN.tmp/inputs"
  mapfile -t inputs < "$GEN.tmp/inputs"
  PYTHONWARNINGS=ignore::DeprecationWarning "$VENV/bin/python" -m grpc_tools.protoc \
    --descriptor_set_in="$GEN.tmp/sdk-imports.pb" \
    -I"$PROTO_SRC" -I"$WKT" -I"$SITE" \
    --python_out="$GEN.tmp" \
    "${inputs[@]}"
  rm -f "$GEN.tmp/sdk-imports.pb" "$GEN.tmp/inputs"
  # Smoke test: the entity module imports and registers its handlers.
  PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$GEN.tmp:$HERE/python/shoppingcart" "$VENV/bin/python" -c '
import cart_entity as e
assert set(e.entity.command_handlers) == {"AddItem", "RemoveItem", "GetCart"}, e.entity.command_handlers
'
  rm -rf "$GEN" && mv "$GEN.tmp" "$GEN"
  echo "$GEN_HASH" > "$PY_DIR/.gen-stamp"
  log "python: protos compiled in $(since "$t") ($(cd "$GEN" && find . -name '*_pb2.py' | sed 's|^\./||' | sort | tr '\n' ' '))"
fi

# ---- Python: the journal consumer sample's venv -------------------------------------------
CONSUMER_VENV="$PY_DIR/consumer-venv"
CONSUMER_REQ="$HERE/../../samples/journal-consumer-python/requirements.txt"
CONSUMER_HASH="$( { cat "$CONSUMER_REQ"; "$PY" -VV; } | hash_of)"
if [[ -x "$CONSUMER_VENV/bin/python" ]] && stamp_ok "$PY_DIR/.consumer-venv-stamp" "$CONSUMER_HASH"; then
  log "python: consumer venv $CONSUMER_VENV is up to date"
else
  t="$(now)"
  log "python: creating the journal consumer's venv $CONSUMER_VENV"
  rm -rf "$CONSUMER_VENV" "$PY_DIR/.consumer-venv-stamp"
  "$PY" -m venv "$CONSUMER_VENV"
  "$CONSUMER_VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$CONSUMER_REQ"
  "$CONSUMER_VENV/bin/python" -c 'import confluent_kafka, fastavro'
  echo "$CONSUMER_HASH" > "$PY_DIR/.consumer-venv-stamp"
  log "python: consumer venv ready in $(since "$t")"
fi

log "ready in $(since "$T_ALL"):"
log "  go     HOST=127.0.0.1 PORT=<port> $GO_BIN"
log "  go TCK HOST=127.0.0.1 PORT=<port> $GO_TCK_BIN"
log "  python HOST=127.0.0.1 PORT=<port> PYTHONPATH=$GEN $VENV/bin/python $HERE/python/shoppingcart/main.py"
log "  journal consumer $CONSUMER_VENV/bin/python samples/journal-consumer-python/consumer.py --topic <prefix><service>.journal"
