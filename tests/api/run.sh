#!/usr/bin/env bash
# API conformance: schemathesis against a real engine, driven by the engine's own
# GET /openapi.json (docs/openapi.json, built in).
#
# Starts its own redis-server, Webex simulator (`xapi-stream sim`) and engine (`xapi-stream
# serve`), each on a free loopback port; tests/api/prepare.py then activates one simulated
# organization and makes a setup session, a recorded trackingId and a console session, which
# schemathesis uses for half of the path parameters (made-up values otherwise). schemathesis runs
# every operation of the document (none excluded: the webhook without a valid signature and the
# console's POSTs without a CSRF token are still checked for their 401/403 answers) with the
# admin bearer and the checks not_a_server_error, status_code_conformance,
# response_schema_conformance, content_type_conformance and response_headers_conformance.
# Everything it started is stopped on exit.
#
# Env: CHECKS (comma-separated, instead of those five), MAX_EXAMPLES (30 per operation), SEED (1;
# "random" for none), XAPI_STREAM_BIN (default target/debug/xapi-stream, built here unless
# SKIP_BUILD=1), KEEP_LOGS=1 keeps the work directory, SCHEMA=docs/openapi.json tests that file
# instead of the engine's built-in copy (edit the document without a rebuild).
# Exit status: 0 when schemathesis found nothing, non-zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
API_DIR=$ROOT/tests/api
VENV=$API_DIR/.venv
MAX_EXAMPLES=${MAX_EXAMPLES:-30}
SEED=${SEED:-1}
BIN=${XAPI_STREAM_BIN:-$ROOT/target/debug/xapi-stream}
TOKEN=api-check-admin-token
START=$(date +%s)

say() { printf '>> %s\n' "$*"; }
die() { printf 'tests/api: %s\n' "$*" >&2; exit 1; }

command -v redis-server >/dev/null || die "redis-server is required (make deps)"
command -v python3 >/dev/null || die "python3 is required"

# 1. schemathesis, pinned, in a venv of its own (reinstalled when requirements.txt changes).
if ! cmp -s "$API_DIR/requirements.txt" "$VENV/.installed" 2>/dev/null; then
  say "installing $(tr '\n' ' ' < "$API_DIR/requirements.txt")into tests/api/.venv"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$API_DIR/requirements.txt"
  cp "$API_DIR/requirements.txt" "$VENV/.installed"
fi
PY=$VENV/bin/python
say "$("$VENV/bin/schemathesis" --version)"

if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${XAPI_STREAM_BIN:-}" ]; then
  say "building the engine (cargo build --bin xapi-stream)"
  cargo build --quiet --bin xapi-stream
fi
[ -x "$BIN" ] || die "no engine binary at $BIN"

# 2. The stack.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/xapi-api.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$rc" != 0 ] || [ "${KEEP_LOGS:-0}" = 1 ]; then
    for f in "$WORK"/*.log; do
      [ -s "$f" ] || continue
      echo "---- last lines of $(basename "$f")"; tail -n 20 "$f"
    done
    [ "${KEEP_LOGS:-0}" = 1 ] && echo "logs kept in $WORK" || rm -rf "$WORK"
  else
    rm -rf "$WORK"
  fi
  # Last, for whoever reads the closing line.
  [ -n "${SUMMARY:-}" ] && echo "$SUMMARY"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits until URL answers 200 (at most $2 seconds).
wait_200() {
  local url=$1 limit=$2 i
  for ((i = 0; i < limit * 10; i++)); do
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url" \
      2>/dev/null && return 0
    sleep 0.1
  done
  die "$url did not answer 200 within ${limit}s"
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)

SIM_PORT=$(free_port)
SIM=http://127.0.0.1:$SIM_PORT
"$BIN" sim --bind "127.0.0.1:$SIM_PORT" --orgs 1 --devices 2 --poll-wait 1 >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_200 "$SIM/_sim/orgs" 20

PORT=$(free_port)
BASE=http://127.0.0.1:$PORT
ENV=(
  "XAPI_STREAM__SERVER__BIND=127.0.0.1:$PORT"
  "XAPI_STREAM__SERVER__PUBLIC_URL=$BASE"
  "XAPI_STREAM__SERVER__ADMIN_TOKEN=$TOKEN"
  "XAPI_STREAM__SERVER__SHUTDOWN_GRACE_SECS=2"
  "XAPI_STREAM__SERVER__WORKERS=2"
  "XAPI_STREAM__REDIS__URL=redis://127.0.0.1:$REDIS_PORT/"
  "XAPI_STREAM__REDIS__KEY_PREFIX=apicheck"
  "XAPI_STREAM__SECURITY__ENCRYPTION_KEY=$("$PY" -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
  "XAPI_STREAM__WEBEX__ALLOW_HTTP=true"
  # Schemathesis sends many requests without a token, all from 127.0.0.1: with the default
  # limit the address would be throttled (429, documented) and the valid cases after it too.
  # The throttle has its own black-box test (tests/it/operator.rs).
  "XAPI_STREAM__SECURITY__ADMIN_FAILURES_PER_ADDRESS=1000000"
  # The simulator's defaults (xapi-stream sim --help).
  "XAPI_STREAM__INTEGRATION__APP_ID=ac6b6972-538e-11ec-bf63-0242ac130002"
  "XAPI_STREAM__INTEGRATION__CLIENT_ID=sim-client-id"
  "XAPI_STREAM__INTEGRATION__CLIENT_SECRET=sim-client-secret"
  "XAPI_STREAM__LOG__LEVEL=${ENGINE_LOG:-warn}"
)
for region in us-west-2_r us-east-2_a eu-central-1_k me-central-1_d us-gov-west-1_a1; do
  ENV+=("XAPI_STREAM__WEBEX__JWKS__$region=$SIM/jwks/$region")
done
env "${ENV[@]}" "$BIN" serve >"$WORK/engine.log" 2>&1 &
PIDS+=($!)
wait_200 "$BASE/readyz" 30
say "stack up: redis :$REDIS_PORT, simulator :$SIM_PORT, engine :$PORT"

# Real data for schemathesis (a completed tenant, its devices, a setup session, a recorded
# trackingId, a console session): used for half of the path parameters, made-up values otherwise.
COOKIE=$("$PY" "$API_DIR/prepare.py" "$BASE" "$SIM" "$TOKEN" "$WORK/schemathesis.toml")

SEED_ARGS=()
[ "$SEED" = random ] || SEED_ARGS=(--seed "$SEED")
if [ -n "${SCHEMA:-}" ]; then
  LOCATION=(run "$(realpath "$SCHEMA")" --url "$BASE")
else
  LOCATION=(run "$BASE/openapi.json")
fi
say "schemathesis ${LOCATION[*]} (max examples $MAX_EXAMPLES per operation${SEED_ARGS:+, seed $SEED})"
# One worker: schemathesis's workers are threads, and Hypothesis parses source with ast.parse in
# each. CPython 3.11 (Debian 12's 3.11.2) keeps the AST constructor's recursion depth per
# interpreter, not per thread, so two threads parsing at once can fail with "SystemError: AST
# constructor recursion depth mismatch" (python/cpython#106905), which schemathesis reports as a
# failed operation (it did once in CI). Measured on 2 cores, one worker is no slower: the engine
# under test uses the same cores.
set +e
cd "$WORK" # its cache (.schemathesis/) stays out of the work tree
"$VENV/bin/schemathesis" --no-color --config-file "$WORK/schemathesis.toml" "${LOCATION[@]}" \
  --header "Authorization: Bearer $TOKEN" --header "Cookie: $COOKIE" \
  --checks "${CHECKS:-not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance,response_headers_conformance}" \
  --max-examples "$MAX_EXAMPLES" \
  --workers 1 \
  --request-timeout 30 \
  --report junit --report-dir "$WORK/report" \
  "${SEED_ARGS[@]}" 2>&1 | tee "$WORK/schemathesis.log"
rc=${PIPESTATUS[0]}
set -e
cd "$ROOT"
"$PY" - "$BASE/metrics" <<'EOF' || true
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
ok = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
         if l.startswith("xapi_stream_device_requests_total{") and 'result="ok"' in l)
print(f"device calls the simulator answered: {ok:.0f}")
EOF

cases=$("$PY" - "$WORK/report" <<'EOF'
import glob, sys, xml.etree.ElementTree as ET
t = f = e = s = 0
for path in glob.glob(sys.argv[1] + "/*.xml"):
    for suite in ET.parse(path).getroot().iter("testsuite"):
        t += int(suite.get("tests", 0)); f += int(suite.get("failures", 0))
        e += int(suite.get("errors", 0)); s += int(suite.get("skipped", 0))
print(f"{t - f - e - s} passed, {f + e} failed, {s} skipped")
EOF
) || cases="no junit report"
echo "schemathesis exit $rc after $(($(date +%s) - START)) s; JUnit test cases (one per operation, one for the stateful phase):"
SUMMARY="api: $cases"
exit "$rc"
