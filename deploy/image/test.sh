#!/usr/bin/env bash
# make image-test: runs the image `make image` built, as production runs it, against a real
# redis-server and the Webex simulator, and proves through the container's published ports that
# it works:
#   - podman run --read-only (no tmpfs either) --user 10001:10001 --cap-drop=ALL
#     --security-opt=no-new-privileges; `podman top` must show uid/gid 10001 and no capabilities
#   - /readyz and /metrics answer 200 on the admin port (9090, published on 127.0.0.1)
#   - an activation with the simulator's JWT (POST /admin/activations) reaches
#     provisioning_state=completed
#   - signed webhooks the simulator sends to server.public_url (the published port 8080) are
#     answered 200, counted in messages_total{source="webhook"}, and their entries (source =
#     webhook) are in the Redis streams <prefix>:{<org>}:status / :events (XRANGE, XLEN)
#   - SIGTERM (podman stop) ends it with exit code 0 within server.shutdown_grace_secs
# redis-server and the simulator (target/debug/xapi-stream sim, the devkit build; built if missing)
# run on the host, bound to the podman bridge's gateway address (host.containers.internal), which
# the container reaches through the bridge. Everything started here is stopped on exit; logs are
# shown on failure.
#
# Installs what is missing (apt-get: podman, runc, uidmap, containernetworking-plugins, iptables,
# redis-server, redis-tools, curl, python3).
# Env: IMAGE (default localhost/xapi-stream:<crate version>), SIM_BIN (target/debug/xapi-stream),
# GRACE (server.shutdown_grace_secs for the run, 10), HOST_ADDR (the host address redis-server and
# the simulator listen on, instead of the bridge's gateway), KEEP_LOGS=1 (keep the work directory).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
START=$(date +%s.%N)

apt_need "podman podman" "runc runc" "newuidmap uidmap" \
  "/usr/lib/cni/bridge containernetworking-plugins" "iptables iptables" \
  "redis-server redis-server" "redis-cli redis-tools" "curl curl" "python3 python3"

VERSION=$(crate_version)
IMAGE=${IMAGE:-localhost/$IMAGE_NAME:$VERSION}
SIM_BIN=${SIM_BIN:-$ROOT/target/debug/xapi-stream}
GRACE=${GRACE:-10}
TOKEN=image-test-admin-token
PREFIX=imgtest
NAME=xapi-stream-image-test-$$

podman image exists "$IMAGE" || die "no image $IMAGE: run make image first"
if [ ! -x "$SIM_BIN" ]; then
  say "building the simulator (cargo build --bin xapi-stream, default features)"
  cargo build --quiet --bin xapi-stream
fi
"$SIM_BIN" sim --help >/dev/null 2>&1 || die "$SIM_BIN has no simulator (needs the devkit feature)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/xapi-image-test.XXXXXX")
PIDS=()
SUMMARY=
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] || [ "${KEEP_LOGS:-0}" = 1 ]; then
    podman logs "$NAME" >"$WORK/engine.log" 2>&1
    podman inspect --format 'container {{.Name}}: {{.State.Status}}, exit code {{.State.ExitCode}} {{.State.Error}}' "$NAME" 2>/dev/null
  fi
  podman rm -f -t 0 "$NAME" >/dev/null 2>&1
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ "$rc" != 0 ] || [ "${KEEP_LOGS:-0}" = 1 ]; then
    for f in "$WORK"/*.log; do
      [ -s "$f" ] || continue
      echo "---- last lines of $(basename "$f")"; tail -n 30 "$f"
    done
  fi
  if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
  [ "$rc" = 0 ] && [ -n "$SUMMARY" ] && printf '%s\n' "$SUMMARY"
  [ "$rc" = 0 ] || echo "image-test FAILED (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
secs_since() { python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "$1"; }
# can_bind ADDR: is ADDR an address of this host?
can_bind() { python3 -c 'import socket, sys; socket.socket().bind((sys.argv[1], 0))' "$1" 2>/dev/null; }
# wait_200 URL SECONDS
wait_200() {
  local url=$1 limit=$2 i
  for ((i = 0; i < limit * 10; i++)); do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    podman container exists "$NAME" && [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = false ] \
      && die "the container exited while waiting for $url"
    sleep 0.1
  done
  die "$url did not answer 200 within ${limit}s"
}
# json EXPR: evaluates EXPR on the JSON document on stdin (as `d`).
json() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

# podman's default ulimits (containers.conf) must not exceed what root may set here.
ULIMITS=()
hard_nofile=$(ulimit -Hn) hard_nproc=$(ulimit -Hu)
[ "$hard_nofile" != unlimited ] && [ "$hard_nofile" -lt 20000 ] && ULIMITS+=(--ulimit "nofile=$hard_nofile:$hard_nofile")
[ "$hard_nproc" != unlimited ] && [ "$hard_nproc" -lt 4096 ] && ULIMITS+=(--ulimit "nproc=$hard_nproc:$hard_nproc")

# 1. The image runs at all (this also brings up podman's bridge, cni-podman0, on first use).
say "image $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes): $(podman run --rm "${ULIMITS[@]}" "$IMAGE" --version)"

# 2. The address the container reaches the host on: the gateway of podman's default bridge
# network (what host.containers.internal names in the container). A network backend that removes
# the bridge when no container is attached (netavark) leaves no such address: then the host's
# own outbound address, reached through the bridge just the same.
GW=$(podman network inspect podman --format '{{range .Subnets}}{{.Gateway}} {{end}}' | awk '{print $1}')
if [ -n "${HOST_ADDR:-}" ]; then
  HOST_IP=$HOST_ADDR WHERE="HOST_ADDR"
elif [ -n "$GW" ] && can_bind "$GW"; then
  HOST_IP=$GW WHERE="podman bridge gateway"
else
  HOST_IP=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("192.0.2.1", 9)); print(s.getsockname()[0])') \
    || die "no address of this host that a container can reach (podman bridge gateway ${GW:-?} is down, no route)"
  WHERE="host address; podman bridge gateway ${GW:-?} is not up"
fi

# 3. redis-server and the simulator on that address.
# With a password: Redis's protected mode refuses password-less clients from other addresses.
REDIS_PORT=$(free_port)
export REDISCLI_AUTH
REDISCLI_AUTH=$(head -c18 /dev/urandom | base64 | tr '+/' '-_')
redis-server --port "$REDIS_PORT" --bind "$HOST_IP" --requirepass "$REDISCLI_AUTH" --save '' --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
SIM_PORT=$(free_port)
SIM=http://$HOST_IP:$SIM_PORT
"$SIM_BIN" sim --bind "$HOST_IP:$SIM_PORT" --orgs 1 --devices 2 --poll-wait 1 >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do redis-cli -h "$HOST_IP" -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -h "$HOST_IP" -p "$REDIS_PORT" ping >/dev/null || die "redis-server did not start"
wait_200 "$SIM/_sim/orgs" 20
say "redis-server $HOST_IP:$REDIS_PORT and simulator $SIM ($WHERE)"

# 4. The engine in the container, its two ports published on the host's loopback.
HTTP_PORT=$(free_port)
ADMIN_PORT=$(free_port)
PUBLIC=http://127.0.0.1:$HTTP_PORT
ADMIN=http://127.0.0.1:$ADMIN_PORT
ENV=(
  # The simulator posts webhooks from the host: to the published port.
  -e "XAPI_STREAM__SERVER__PUBLIC_URL=$PUBLIC"
  -e "XAPI_STREAM__SERVER__ADMIN_TOKEN=$TOKEN"
  -e "XAPI_STREAM__SERVER__SHUTDOWN_GRACE_SECS=$GRACE"
  -e "XAPI_STREAM__SERVER__WORKERS=2"
  -e "XAPI_STREAM__REDIS__URL=redis://:$REDISCLI_AUTH@$HOST_IP:$REDIS_PORT/"
  -e "XAPI_STREAM__REDIS__KEY_PREFIX=$PREFIX"
  -e "XAPI_STREAM__SECURITY__ENCRYPTION_KEY=$(head -c32 /dev/urandom | base64)"
  -e "XAPI_STREAM__WEBEX__ALLOW_HTTP=true"
  # The simulator's defaults (xapi-stream sim --help).
  -e "XAPI_STREAM__INTEGRATION__APP_ID=ac6b6972-538e-11ec-bf63-0242ac130002"
  -e "XAPI_STREAM__INTEGRATION__CLIENT_ID=sim-client-id"
  -e "XAPI_STREAM__INTEGRATION__CLIENT_SECRET=sim-client-secret"
  -e "XAPI_STREAM__LOG__LEVEL=info"
)
for region in us-west-2_r us-east-2_a eu-central-1_k me-central-1_d us-gov-west-1_a1; do
  ENV+=(-e "XAPI_STREAM__WEBEX__JWKS__$region=$SIM/jwks/$region")
done
say "podman run --read-only --user 10001:10001 --cap-drop=ALL -p 127.0.0.1:$HTTP_PORT:8080 -p 127.0.0.1:$ADMIN_PORT:9090 $IMAGE"
RUN_AT=$(date +%s.%N)
podman run -d --name "$NAME" \
  --read-only --read-only-tmpfs=false \
  --user 10001:10001 --cap-drop=ALL --security-opt=no-new-privileges \
  "${ULIMITS[@]}" \
  -p "127.0.0.1:$HTTP_PORT:8080" -p "127.0.0.1:$ADMIN_PORT:9090" \
  "${ENV[@]}" "$IMAGE" >/dev/null
wait_200 "$ADMIN/readyz" 60
READY_SECS=$(secs_since "$RUN_AT")
say "/readyz 200 after ${READY_SECS}s"

# 5. Who it runs as, and with what: the engine process as the host's kernel sees it (rootful
# podman: no user namespace, so these are the container's ids too), and podman top.
PID=$(podman inspect --format '{{.State.Pid}}' "$NAME")
status_of() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$PID/status"; }
[ "$(status_of Uid)" = 10001 ] && [ "$(status_of Gid)" = 10001 ] \
  || die "the engine runs as uid $(status_of Uid) gid $(status_of Gid), not 10001"
[ "$(status_of CapEff)" = 0000000000000000 ] || die "the engine has capabilities $(status_of CapEff)"
[ "$(status_of NoNewPrivs)" = 1 ] || die "no_new_privs is not set"
[ "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$NAME")" = true ] || die "the root filesystem is not read-only"
podman top "$NAME" user group huser hgroup capeff seccomp | sed 's/^/     /'
say "engine process: uid/gid 10001 ($(podman top "$NAME" user | tail -n1) in the image's /etc/passwd), no capabilities, no_new_privs, read-only root filesystem"

# 6. Probes and metrics on the admin port.
for path in /healthz /readyz /metrics; do
  code=$(curl -sS -o "$WORK/body" -w '%{http_code}' --max-time 5 "$ADMIN$path")
  [ "$code" = 200 ] || die "GET $path answered $code"
done
grep -q '^xapi_stream_' "$WORK/body" || die "/metrics has no xapi_stream_ metric"
say "/healthz, /readyz, /metrics: 200 ($(grep -c '^xapi_stream_' "$WORK/body") xapi_stream_ samples)"
# The public port serves only Webex's paths.
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$PUBLIC/metrics")
[ "$code" = 404 ] || die "GET /metrics on the public port answered $code, not 404"

# 7. An activation through the admin API: the engine fetches JWKS, exchanges tokens and PATCHes
# the app (its webhook: $PUBLIC/tenants/<id>/webhook) at the simulator.
JWT=$(curl -fsS -X POST "$SIM/_sim/orgs/0/activation" | json 'd["jwt"]')
ACT=$(curl -sS -w '\n%{http_code}' -X POST -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d "{\"jwt\": \"$JWT\"}" "$ADMIN/admin/activations")
[ "$(tail -n1 <<<"$ACT")" = 202 ] || die "POST /admin/activations answered: $ACT"
TENANT=$(head -n1 <<<"$ACT" | json 'd["tenant_id"]')
ACT_AT=$(date +%s.%N)
state=
for ((i = 0; i < 300; i++)); do
  state=$(curl -fsS -H "Authorization: Bearer $TOKEN" "$ADMIN/admin/tenants/$TENANT" | json 'd.get("provisioning_state")') || state=?
  [ "$state" = completed ] && break
  sleep 0.1
done
[ "$state" = completed ] || die "tenant $TENANT is $state, not completed, after 30 s"
say "activation: tenant $TENANT completed in $(secs_since "$ACT_AT")s"

# 8. Signed webhooks (X-Spark-Signature, HMAC-SHA1 with the secret the engine registered), sent
# by the simulator to the published port, into the Redis streams.
rcli() { redis-cli -h "$HOST_IP" -p "$REDIS_PORT" "$@"; }
# webhook_entries status|events: entries written from webhooks (field source = webhook).
webhook_entries() {
  local total=0 key
  for key in $(rcli --scan --pattern "$PREFIX:{*}:$1"); do
    total=$((total + $(rcli XRANGE "$key" - + | awk 'prev == "source" && $0 == "webhook" {n++} {prev = $0} END {print n + 0}')))
  done
  echo "$total"
}
# webhook_messages: the engine's count of accepted webhook messages (messages_total{source="webhook"}).
webhook_messages() {
  curl -fsS --max-time 5 "$ADMIN/metrics" \
    | awk '/^xapi_stream_messages_total\{/ && /source="webhook"/ {n += $NF} END {print n + 0}'
}
N=20
before_status=$(webhook_entries status) before_events=$(webhook_entries events) before_msgs=$(webhook_messages)
STATUSES=$(curl -fsS -X POST "$SIM/_sim/orgs/0/emit?n=$N" | json '" ".join(map(str, d["webhook_statuses"]))')
[ "$(tr ' ' '\n' <<<"$STATUSES" | grep -cx 200)" = "$N" ] || die "webhook answers: $STATUSES (want $N x 200)"
msgs=$(($(webhook_messages) - before_msgs))
[ "$msgs" = "$N" ] || die "$N webhooks answered 200, but messages_total{source=\"webhook\"} grew by $msgs"
# A 200 means the batch is in Redis already.
status_added=$(($(webhook_entries status) - before_status)) events_added=$(($(webhook_entries events) - before_events))
[ "$status_added" -gt 0 ] && [ $((status_added + events_added)) -gt 0 ] \
  || die "$N webhooks answered 200, but Redis has no new entries from webhooks (status +$status_added, events +$events_added)"
STATUS_KEY=$(rcli --scan --pattern "$PREFIX:{*}:status" | head -1)
EVENTS_KEY=${STATUS_KEY%:status}:events
say "$N signed webhooks -> published port: all 200, $msgs messages accepted; in Redis: +$status_added status entries (XLEN $STATUS_KEY = $(rcli XLEN "$STATUS_KEY")), +$events_added event entries (XLEN $(rcli XLEN "$EVENTS_KEY")); newest status entry:"
rcli XREVRANGE "$STATUS_KEY" + - COUNT 1 | { read -r id; echo "id $id"; paste -d' ' - -; } | sed 's/^/     /'

# 9. SIGTERM: the drain must end the engine with exit code 0 within shutdown_grace_secs.
say "podman stop -t $((GRACE + 10)) (SIGTERM; SIGKILL only after $((GRACE + 10)) s)"
STOP_AT=$(date +%s.%N)
podman stop -t $((GRACE + 10)) "$NAME" >/dev/null
STOP_SECS=$(secs_since "$STOP_AT")
EXIT_CODE=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$EXIT_CODE" = 0 ] || die "exit code $EXIT_CODE after SIGTERM (137: killed)"
python3 -c 'import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))' "$STOP_SECS" "$GRACE" \
  || die "the engine took ${STOP_SECS}s to stop, more than shutdown_grace_secs ($GRACE)"
podman logs "$NAME" 2>&1 | grep -q '"shutdown complete"' || die "no \"shutdown complete\" in the engine's log after SIGTERM"
say "stopped in ${STOP_SECS}s, exit code $EXIT_CODE, the engine's log says: $(podman logs "$NAME" 2>&1 | grep -o '"message":"shutting down[^"]*"' | head -1 | cut -d'"' -f4) ... shutdown complete"

ID=$(podman image inspect --format '{{.Id}}' "$IMAGE")
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
ARCHIVE=$OUT/$IMAGE_NAME-$VERSION.oci.tar
IMAGE_NOTE="id ${ID:0:12}, $SIZE bytes uncompressed"
if [ -f "$ARCHIVE" ]; then
  DIGEST=$(tar -xOf "$ARCHIVE" index.json | json 'd["manifests"][0]["digest"]')
  IMAGE_NOTE="$IMAGE_NOTE; ${ARCHIVE#"$ROOT"/}: $(stat -c %s "$ARCHIVE") bytes, manifest digest $DIGEST"
fi
SUMMARY="image-test passed in $(secs_since "$START")s: $IMAGE ($IMAGE_NOTE)
  ready after ${READY_SECS}s; activation completed; $N signed webhooks -> Redis; SIGTERM -> exit $EXIT_CODE after ${STOP_SECS}s (grace ${GRACE}s)
  uid/gid 10001, no capabilities, read-only root (no tmpfs); network: bridge, redis + simulator on $HOST_IP ($WHERE), ports published on 127.0.0.1"
