#!/usr/bin/env bash
# Offline validation of the deploy/ artifacts (no cluster needed):
#   bash deploy/check.sh
# Installs what a Debian machine lacks, without prompting: kubectl (apt: kubernetes-client),
# promtool (apt: prometheus) and kubernetes-validate (pip; in a private venv if the system
# Python refuses pip installs) and, for the Grafana dashboard, node and npm (apt: nodejs npm)
# with the npm packages pinned in deploy/.tools/package-lock.json (npm ci into the git-ignored
# deploy/.tools/node_modules, only when missing or stale). Needs root (or the tools already
# installed) for apt-get.
# Note: Debian's `prometheus` package also installs a prometheus daemon; on a machine with
# systemd it is enabled by the package. Install promtool yourself beforehand to avoid that.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OVERLAYS=(dev prod)
K8S_VERSION="${K8S_VERSION:-1.30.0}" # oldest Kubernetes the manifests are checked against
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/install.log"
export DEBIAN_FRONTEND=noninteractive

say() { printf '%s\n' "$*"; }
die() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() { # apt_install PKG... : install without prompting; apt-get update only if needed
  command -v apt-get >/dev/null 2>&1 || return 1
  if apt-get install -y --no-install-recommends "$@" >>"$LOG" 2>&1; then return 0; fi
  if [ "$APT_UPDATED" = 0 ]; then
    APT_UPDATED=1
    apt-get update >>"$LOG" 2>&1 || return 1
    apt-get install -y --no-install-recommends "$@" >>"$LOG" 2>&1 && return 0
  fi
  return 1
}

# --- tools -------------------------------------------------------------------------------
if ! command -v kubectl >/dev/null 2>&1; then
  say "installing kubectl (apt: kubernetes-client)"
  if ! apt_install kubernetes-client || ! command -v kubectl >/dev/null 2>&1; then
    die "kubectl is missing and 'apt-get install kubernetes-client' failed; install kubectl (>= 1.27, for 'kubectl kustomize') from https://kubernetes.io/docs/tasks/tools/ and re-run (log: $(tail -n 3 "$LOG" 2>/dev/null | tr '\n' ' '))"
  fi
fi

if ! command -v promtool >/dev/null 2>&1; then
  say "installing promtool (apt: prometheus)"
  apt_install prometheus && command -v promtool >/dev/null 2>&1 \
    || die "could not install promtool ('apt-get install prometheus'); see the apt output: $(tail -n 3 "$LOG" | tr '\n' ' ')"
fi

command -v python3 >/dev/null 2>&1 || apt_install python3 || die "python3 is missing and could not be installed"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "installing node and npm (apt: nodejs npm)"
  apt_install nodejs npm && command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    || die "node/npm are missing and 'apt-get install nodejs npm' failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
  || die "node $(node --version) is too old for deploy/.tools (ts-json-schema-generator needs >= 18; 20 is tested)"
# The dashboard's schema tools, exactly as locked: npm ci when node_modules is missing or was
# installed from another lock file (the copy of the lock below marks a finished install).
TOOLS=deploy/.tools
if ! cmp -s "$TOOLS/package-lock.json" "$TOOLS/node_modules/.installed-lock.json" 2>/dev/null; then
  say "installing the dashboard schema tools into $TOOLS/node_modules (npm ci: $(node -p "Object.entries(require('./$TOOLS/package.json').dependencies).map(([n, v]) => n + '@' + v).join(' ')"))"
  (cd "$TOOLS" && npm ci --no-audit --no-fund --silent) >>"$LOG" 2>&1 \
    || die "npm ci in $TOOLS failed: $(tail -n 5 "$LOG" | tr '\n' ' ')"
  cp "$TOOLS/package-lock.json" "$TOOLS/node_modules/.installed-lock.json"
fi

# kubernetes-validate: already on PATH, else pip install, else a private venv (PEP 668 systems).
KV=kubernetes-validate
PY=python3
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  say "installing kubernetes-validate (pip)"
  if python3 -m pip install -q kubernetes-validate >>"$LOG" 2>&1 && command -v kubernetes-validate >/dev/null 2>&1; then
    :
  else
    VENV="${XDG_CACHE_HOME:-$HOME/.cache}/xapi-stream-check/venv"
    if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
      python3 -m venv "$VENV" >>"$LOG" 2>&1 || { apt_install python3-venv && python3 -m venv "$VENV" >>"$LOG" 2>&1; } \
        || die "could not create a Python venv for kubernetes-validate (apt: python3-venv)"
      "$VENV/bin/pip" install -q kubernetes-validate >>"$LOG" 2>&1 \
        || die "pip install kubernetes-validate failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"
    fi
    KV="$VENV/bin/kubernetes-validate"
    PY="$VENV/bin/python"
  fi
fi
"$PY" -c 'import yaml' 2>/dev/null || "$PY" -m pip install -q pyyaml >>"$LOG" 2>&1 || die "PyYAML is missing for $PY"

# --- Kubernetes manifests ------------------------------------------------------------------
# Built-in kinds are validated against the Kubernetes OpenAPI schemas (strict: unknown fields
# are errors). kubernetes-validate has no schema for CRDs (ServiceMonitor), so those are split
# out and checked structurally below.
for o in "${OVERLAYS[@]}"; do
  out="$WORK/$o.yaml"
  kubectl kustomize "deploy/k8s/overlays/$o" >"$out" || die "kubectl kustomize deploy/k8s/overlays/$o"
  say "OK   kustomize renders overlay $o ($(grep -c '^kind:' "$out") objects)"

  "$PY" - "$out" "$WORK/$o.builtin.yaml" "$WORK/$o.crd.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
builtin = [d for d in docs if "monitoring.coreos.com" not in d.get("apiVersion", "")]
crd = [d for d in docs if "monitoring.coreos.com" in d.get("apiVersion", "")]
yaml.safe_dump_all(builtin, open(sys.argv[2], "w"), sort_keys=False)
yaml.safe_dump_all(crd, open(sys.argv[3], "w"), sort_keys=False)
PY
  if ! "$KV" --strict --quiet --no-warn -k "$K8S_VERSION" "$WORK/$o.builtin.yaml"; then
    die "kubernetes-validate --strict rejected overlay $o"
  fi
  say "OK   kubernetes-validate --strict (k8s $K8S_VERSION) overlay $o: $(grep -c '^kind:' "$WORK/$o.builtin.yaml") built-in objects"

  # Semantic checks the schemas cannot express.
  "$PY" - "$out" "$o" <<'PY' || die "semantic checks of overlay $o"
import sys, yaml, base64, tomllib
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
overlay = sys.argv[2]
by = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] in ("ConfigMap", "Secret") else d["metadata"]["name"]): d for d in docs}
def fail(msg):
    print(f"FAIL overlay {overlay}: {msg}", file=sys.stderr); sys.exit(1)
dep = by.get(("Deployment", "xapi-stream")) or fail("no Deployment xapi-stream")
pod = dep["spec"]["template"]["spec"]
c = next((c for c in pod["containers"] if c["name"] == "xapi-stream"), None) or fail("no container xapi-stream")
if c["args"] != ["serve", "--config", "/etc/xapi-stream/config.toml"]: fail(f"args {c['args']}")
env = {e["name"]: e.get("value") for e in c.get("env", [])}
want_url = {"dev": "redis://redis:6379", "prod": "rediss://redis.example.internal:6379"}[overlay]
if env.get("XAPI_STREAM__REDIS__URL") != want_url: fail(f"XAPI_STREAM__REDIS__URL={env.get('XAPI_STREAM__REDIS__URL')}")
want_replicas = {"dev": 1, "prod": 3}[overlay]
if dep["spec"]["replicas"] != want_replicas: fail(f"replicas {dep['spec']['replicas']}")
sc = c["securityContext"]
for k, v in {"runAsNonRoot": True, "runAsUser": 10001, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}.items():
    if sc.get(k) != v: fail(f"securityContext.{k}={sc.get(k)}")
if sc["capabilities"]["drop"] != ["ALL"]: fail("capabilities.drop")
# The config file must only use keys the engine knows (unknown keys stop it), and the drain must fit.
cm = by.get(("ConfigMap", "xapi-stream-config")) or fail("no ConfigMap xapi-stream-config")
cfg = tomllib.loads(cm["data"]["config.toml"])
ref = tomllib.load(open("config/default.toml", "rb"))
def keys(t, p=""):
    out = set()
    for k, v in t.items():
        if isinstance(v, dict) and not (p + k) == "webex.jwks": out |= keys(v, p + k + ".")
        else: out.add(p + k)
    return out
unknown = keys(cfg) - keys(ref)
if unknown: fail(f"config.toml keys not in config/default.toml: {sorted(unknown)}")
if cfg["server"]["bind"] != "0.0.0.0:8080": fail("server.bind must be 0.0.0.0:8080")
# The admin listener: probes on it, a container port and a Service port for it, the public port
# left to what Webex calls.
if cfg["server"].get("admin_bind") != "0.0.0.0:9090": fail("server.admin_bind must be 0.0.0.0:9090")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
if ports != {"http": 8080, "admin": 9090}: fail(f"container ports {ports}")
for probe in ("livenessProbe", "readinessProbe"):
    if c[probe]["httpGet"]["port"] != "admin": fail(f"{probe} must use port admin")
svc = by.get(("Service", "xapi-stream")) or fail("no Service xapi-stream")
if {p["name"]: p["port"] for p in svc["spec"]["ports"]} != {"http": 8080, "admin": 9090}: fail("Service ports")
np = by.get(("NetworkPolicy", "xapi-stream")) or fail("no NetworkPolicy xapi-stream")
for rule in np["spec"]["ingress"]:
    if any(p["port"] == 9090 for p in rule["ports"]) and not rule.get("from"):
        fail("the admin port must not be open to everyone")
grace = cfg["server"]["shutdown_grace_secs"]
prestop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
if prestop + grace >= pod["terminationGracePeriodSeconds"]:
    fail(f"preStop {prestop}s + shutdown_grace_secs {grace}s must be < terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}")
secret_ref = c["envFrom"][0]["secretRef"]["name"]
if overlay == "dev":
    s = by.get(("Secret", "xapi-stream-secrets")) or fail("dev overlay must generate xapi-stream-secrets")
    if secret_ref != s["metadata"]["name"]: fail("envFrom does not reference the generated Secret")
    key = base64.b64decode(s["data"]["XAPI_STREAM__SECURITY__ENCRYPTION_KEY"])
    if len(base64.b64decode(key, validate=True)) != 32: fail("dev encryption key is not base64 of 32 bytes")
    if not any(d["kind"] == "Service" and d["metadata"]["name"] == "redis" for d in docs): fail("dev overlay lacks Service redis")
else:
    if secret_ref != "xapi-stream-secrets": fail(f"prod must reference the pre-created Secret xapi-stream-secrets, not {secret_ref}")
    if any(d["kind"] == "Secret" for d in docs): fail("prod overlay must not contain a Secret")
    hpa = by[("HorizontalPodAutoscaler", "xapi-stream")]
    if not hpa["spec"]["minReplicas"] <= dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]: fail("replicas outside HPA range")
PY
  say "OK   semantic checks overlay $o (args, env, securityContext, config keys, drain budget, Secret)"

  if [ -s "$WORK/$o.crd.yaml" ] && grep -q '^kind:' "$WORK/$o.crd.yaml"; then
    "$PY" - "$WORK/$o.crd.yaml" <<'PY' || die "ServiceMonitor of overlay $o"
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if not d: continue
    assert d["apiVersion"] == "monitoring.coreos.com/v1" and d["kind"] == "ServiceMonitor", d["kind"]
    spec = d["spec"]
    allowed = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels", "sampleLimit"}
    assert set(spec) <= allowed, f"unexpected spec fields {set(spec) - allowed}"
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/name"] == "xapi-stream"
    ep = spec["endpoints"][0]
    assert (ep["port"], ep["path"], ep["interval"]) == ("admin", "/metrics", "15s"), ep
PY
    say "OK   ServiceMonitor (CRD, checked structurally) overlay $o: port admin, /metrics, every 15s"
  fi
done

# --- Prometheus rules ----------------------------------------------------------------------
promtool check rules deploy/prometheus/alerts.yaml >"$WORK/promtool.out" 2>&1 \
  || { cat "$WORK/promtool.out" >&2; die "promtool check rules deploy/prometheus/alerts.yaml"; }
say "OK   promtool check rules deploy/prometheus/alerts.yaml: $(grep -o '[0-9]* rules found' "$WORK/promtool.out")"

# --- Grafana dashboard ---------------------------------------------------------------------
python3 - deploy/grafana/xapi-stream.json <<'PY' || die "deploy/grafana/xapi-stream.json"
import json, sys
d = json.load(open(sys.argv[1]))
assert d.get("schemaVersion") == 39, "schemaVersion must be 39"
assert any(v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource" and v["query"] == "prometheus"
           for v in d["templating"]["list"]), "datasource variable DS_PROMETHEUS missing"
panels = d["panels"]
assert panels, "no panels"
n = 0
for p in panels:
    assert p.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}", f"panel {p.get('title')}: datasource"
    targets = p.get("targets") or []
    assert targets, f"panel {p.get('title')!r} has no targets"
    for t in targets:
        assert (t.get("expr") or "").strip(), f"panel {p.get('title')!r} has an empty expr"
        n += 1
print(f"OK   grafana dashboard is valid JSON: {len(panels)} panels, {n} non-empty exprs")
PY

# Grafana's own schema. @grafana/schema publishes the dashboard model as TypeScript types
# (raw/dashboard/x `Dashboard`, the JSON a dashboard is saved, exported and provisioned as) and
# each panel plugin's options; deploy/.tools/grafana-types.ts names the ones used here and
# ts-json-schema-generator turns them into one JSON schema (closed objects wherever the
# TypeScript types are: additionalProperties false). deploy/.tools/validate-dashboard.mjs (ajv)
# then checks
#   - the whole dashboard against `Dashboard`: unknown or mistyped fields of the dashboard, its
#     panels (Panel | RowPanel), gridPos, templating, annotations, links, fieldConfig (defaults,
#     overrides, mappings, thresholds), wrong enum values (graphTooltip, variable hide/refresh),
#     and missing required fields (schemaVersion, a threshold's color, a time range's to);
#   - each timeseries/stat panel's options and fieldConfig.defaults.custom against the plugin's
#     types, closed but with nothing required (Grafana fills missing options from the plugin's
#     defaults when it loads a panel), and override properties (custom.* against the plugin's
#     field config, the rest against the dashboard's).
# It does not check: targets (Record<string, unknown> in Grafana's type; the PromQL runs on a
# real Prometheus in tests/it/prometheus.rs), options of other panel types, units and colours
# (free strings in the types), nor semantics such as unique ids or overlapping gridPos.
# Import-only keys (__inputs, __requires, __elements: read and dropped by Grafana's import, not
# in the `Dashboard` type) are set aside by the validator; this dashboard has none (it uses the
# datasource variable DS_PROMETHEUS instead).
SCHEMA="$WORK/grafana-dashboard.schema.json"
(cd "$TOOLS" && node_modules/.bin/ts-json-schema-generator --path grafana-types.ts --tsconfig tsconfig.json \
  --type Checked --expose none -o "$SCHEMA") >"$WORK/tsjsg.out" 2>&1 \
  || { cat "$WORK/tsjsg.out" >&2; die "ts-json-schema-generator could not turn Grafana's types into a JSON schema"; }
GRAFANA_SCHEMA_VERSION="$(node -p "require('./$TOOLS/node_modules/@grafana/schema/package.json').version")"
out="$(node "$TOOLS/validate-dashboard.mjs" "$SCHEMA" deploy/grafana/xapi-stream.json 2>&1)" \
  || { printf '%s\n' "$out" >&2; die "deploy/grafana/xapi-stream.json does not match Grafana's schema (@grafana/schema $GRAFANA_SCHEMA_VERSION)"; }
say "OK   grafana dashboard matches @grafana/schema $GRAFANA_SCHEMA_VERSION: $out"

# The check must be able to fail: broken copies of the dashboard, each of which the schema has
# to refuse (a verdict "invalid"; exit 2 would be a failure to check at all), and variants that
# must still pass.
mkdir -p "$WORK/mutants"
python3 - deploy/grafana/xapi-stream.json "$WORK/mutants" <<'PY'
import copy, json, sys
base = json.load(open(sys.argv[1]))
ts = next(i for i, p in enumerate(base["panels"]) if p["type"] == "timeseries")
stat = next(i for i, p in enumerate(base["panels"]) if p["type"] == "stat")
ov = next(i for i, p in enumerate(base["panels"]) if p["fieldConfig"]["overrides"])
def gridpos_w_string(d): d["panels"][ts]["gridPos"]["w"] = str(d["panels"][ts]["gridPos"]["w"])
def schemaversion_string(d): d["schemaVersion"] = str(d["schemaVersion"])
def unknown_panel_field(d): d["panels"][ts]["datasourse"] = d["panels"][ts].pop("datasource")
def unknown_dashboard_field(d): d["refersh"] = d.pop("refresh")
def graphtooltip_out_of_enum(d): d["graphTooltip"] = 3
def panel_without_type(d): del d["panels"][ts]["type"]
def threshold_without_color(d): del d["panels"][stat]["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["color"]
def variable_current_empty(d): d["templating"]["list"][0]["current"] = {}
def legend_placement_typo(d): d["panels"][ts]["options"]["legend"]["placement"] = "botom"
def legend_unknown_option(d): d["panels"][ts]["options"]["legend"]["dispalyMode"] = "list"
def custom_unknown_field(d): d["panels"][ts]["fieldConfig"]["defaults"]["custom"]["lineWidht"] = 1
def override_unknown_property(d): d["panels"][ov]["fieldConfig"]["overrides"][0]["properties"][0]["id"] = "custom.axisPlacment"
def stat_colormode_typo(d): d["panels"][stat]["options"]["colorMode"] = "red"
def row_without_collapsed(d): d["panels"].append({"type": "row", "id": 999, "title": "r", "panels": []})
refused = [gridpos_w_string, schemaversion_string, unknown_panel_field, unknown_dashboard_field,
           graphtooltip_out_of_enum, panel_without_type, threshold_without_color,
           variable_current_empty, legend_placement_typo, legend_unknown_option,
           custom_unknown_field, override_unknown_property, stat_colormode_typo,
           row_without_collapsed]
# Still valid: the import-only keys of an exported dashboard, and a collapsed row.
def with_import_keys(d):
    d["__inputs"] = [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
    d["__requires"] = [{"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}]
def with_a_row(d): d["panels"].append({"type": "row", "id": 999, "title": "r", "collapsed": True, "panels": [], "gridPos": {"h": 1, "w": 24, "x": 0, "y": 200}})
for kind, fs in (("refused", refused), ("accepted", [with_import_keys, with_a_row])):
    for f in fs:
        d = copy.deepcopy(base)
        f(d)
        json.dump(d, open(f"{sys.argv[2]}/{kind}.{f.__name__}.json", "w"))
PY
# One node process for all of them (each line: valid|invalid, file, first errors or summary).
rc=0
node "$TOOLS/validate-dashboard.mjs" "$SCHEMA" --each "$WORK"/mutants/*.json >"$WORK/mutants.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || [ "$rc" = 1 ] || { cat "$WORK/mutants.out" >&2; die "the dashboard schema check could not check the broken copies (exit $rc)"; }
while IFS=$'\t' read -r verdict file detail; do
  name="$(basename "$file" .json)"
  case "$name:$verdict" in
    refused.*:invalid) say "OK   schema refuses ${name#refused.}: ${detail%% | *}" ;;
    accepted.*:valid) say "OK   schema accepts ${name#accepted.}" ;;
    refused.*:*) die "the dashboard schema check accepted a broken dashboard (${name#refused.})" ;;
    *) die "the dashboard schema check refused a valid variant (${name#accepted.}): $detail" ;;
  esac
done <"$WORK/mutants.out"
[ "$(grep -c . "$WORK/mutants.out")" = "$(ls "$WORK"/mutants/*.json | wc -l)" ] \
  || { cat "$WORK/mutants.out" >&2; die "the dashboard schema check did not answer for every broken copy"; }

say "OK   all checks passed"
