# xapi-stream — two commands on a fresh machine:
#   make demo   start a private Redis, the Webex simulator and the engine; show data arriving,
#               then keep running (console, commands to try) until Ctrl-C
#   make test   every test (fmt, clippy, unit, integration against a real redis-server)
SHELL := /bin/bash
CARGO ?= cargo
NEXTEST := $(shell command -v cargo-nextest 2>/dev/null)

.PHONY: consumer-deps plot-deps check-api demo test deps build bench check-deploy fmt-check clippy unit clean fuzz fuzz-tools image image-test

## Install what a fresh machine lacks, from Debian's packages: redis-server (every Redis-backed
## test), prometheus (promtool, and the real Prometheus the observability test scrapes with) and
## curl (the TLS test reaches the engine with curl --cacert).
deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl ca-certificates"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing$$missing (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server is required"; exit 1; }
	@command -v prometheus >/dev/null 2>&1 || { echo "prometheus is required"; exit 1; }
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { echo "chromium and chromium-driver are required (browser tests)"; exit 1; }
	@redis-server --version; promtool --version 2>&1 | head -1; chromium --version 2>/dev/null | head -1

## The consumer examples' packages (docs/consumers): redis-py into target/consumer-deps/python
## (pip --target, pinned in requirements.txt), ioredis into the Node example's node_modules
## (npm ci from its package-lock.json). The consumer tests run both.
consumer-deps:
	@py=target/consumer-deps/python; req=docs/consumers/python/requirements.txt; \
	if ! cmp -s $$req $$py/.requirements 2>/dev/null; then \
	  echo ">> installing $$(cat $$req) into $$py (pip)"; rm -rf $$py; mkdir -p $$py; \
	  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target $$py -r $$req && cp $$req $$py/.requirements; \
	fi
	@[ -d docs/consumers/node/node_modules/ioredis ] || { echo ">> installing ioredis into docs/consumers/node (npm ci)"; \
	  cd docs/consumers/node && npm ci --silent --no-audit --no-fund; }

## The panel pictures of tests/it/prometheus.rs (target/panels/): matplotlib, pinned with its
## dependencies in tests/it/plot-requirements.txt, into target/plot-deps/python (pip --target).
plot-deps:
	@py=target/plot-deps/python; req=tests/it/plot-requirements.txt; \
	if ! cmp -s $$req $$py/.requirements 2>/dev/null; then \
	  echo ">> installing matplotlib into $$py (pip, pinned in $$req)"; rm -rf $$py; mkdir -p $$py; \
	  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-warn-conflicts --target $$py -r $$req && cp $$req $$py/.requirements; \
	fi

build:
	$(CARGO) build --release --bin xapi-stream

demo: deps build
	./target/release/xapi-stream demo

## The write-path benchmark: wrk (Debian's package) with unique signed bodies against the
## engine, bare actix-web and the Node peer, interleaved, medians of 3 rounds; then 1,000 tenants;
## then the criterion micro-bench. Figures in benches/README.md come from this.
bench: deps
	@command -v wrk >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	$(CARGO) build --release --bins
	./target/release/xapi-bench --seconds 10 --rounds 3
	./target/release/xapi-bench --seconds 10 --rounds 3 --tenants 1000 --no-peer --no-open-loop
	$(CARGO) bench --bench ingest -- --warm-up-time 1 --measurement-time 3

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

## Build every test once, then run them in parallel (each test has its own key prefix;
## fault tests their own redis-server).
unit: deps consumer-deps plot-deps
ifdef NEXTEST
	$(CARGO) nextest run --workspace --no-fail-fast
else
	$(CARGO) test --workspace --no-fail-fast
endif

test: deps fmt-check clippy unit

## API conformance: schemathesis (pinned in tests/api/requirements.txt, installed into
## tests/api/.venv) against a real engine, simulator and redis-server (tests/api/run.sh).
check-api: deps
	bash tests/api/run.sh

## Offline validation of deploy/: kustomize overlays against Kubernetes schemas, promtool on the
## alert rules, the dashboard's JSON and Grafana's own schema (@grafana/schema, pinned in
## deploy/.tools; also proves broken copies are refused). Installs kubectl, promtool,
## kubernetes-validate, node/npm and the pinned npm tools if missing.
check-deploy:
	bash deploy/check.sh

## The container image, without a daemon or registry (deploy/image/build.sh): the static musl
## binary (no devkit) FROM scratch, built from deploy/Dockerfile with buildah, tagged
## xapi-stream:<version> and :<version>-<git rev>, exported to target/image/xapi-stream-<version>.oci.tar.
image:
	bash deploy/image/build.sh

## Runs that image with podman as Kubernetes does (read-only root, uid 10001, no capabilities)
## against redis-server and the simulator: activation, webhooks into Redis, probes, SIGTERM
## (deploy/image/test.sh).
image-test:
	bash deploy/image/test.sh

## Fuzzing (docs/fuzzing.md): every cargo-fuzz target of tests/fuzz/ for FUZZ_SECS seconds
## each (FUZZ_TARGETS picks some), then executions and crashes per target. On the stable
## toolchain through RUSTC_BOOTSTRAP=1; cargo-fuzz is installed into tests/fuzz/.tools.
FUZZ_SECS ?= 120
CARGO_FUZZ := tests/fuzz/.tools/bin/cargo-fuzz

fuzz-tools:
	@test -x $(CARGO_FUZZ) || $(CARGO) install cargo-fuzz --locked --root tests/fuzz/.tools

fuzz: fuzz-tools
	FUZZ_SECS=$(FUZZ_SECS) CARGO_FUZZ=$(CARGO_FUZZ) bash tests/fuzz/run.sh

clean:
	$(CARGO) clean
