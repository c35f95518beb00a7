#!/usr/bin/env bash
# Builds the container image's binary and stages what deploy/Dockerfile copies into the image,
# in target/image/stage/:
#   xapi-stream          static musl binary of the engine alone (--no-default-features: no
#                        simulator, no demo), profile `image` (release, stripped)
#   ca-certificates.crt  Debian's CA roots (ca-certificates)
#   config.toml          config/default.toml with bind = "0.0.0.0:8080", admin_bind = "0.0.0.0:9090"
# Installs what is missing: the Rust target x86_64-unknown-linux-musl (rustup), musl-tools,
# ca-certificates and file (apt-get). deploy/image/build.sh runs it on the host; the Dockerfile's
# optional builder stage runs it in a rust:1-bookworm container.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=x86_64-unknown-linux-musl
PROFILE=image
STAGE=target/image/stage
BIN=target/$TARGET/$PROFILE/xapi-stream

say() { printf '>> %s\n' "$*"; }
die() { printf 'deploy/image/stage.sh: %s\n' "$*" >&2; exit 1; }

missing=()
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
command -v file >/dev/null 2>&1 || missing+=(file)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
  say "adding the Rust target $TARGET (rustup)"
  rustup target add "$TARGET"
fi

say "building $BIN (cargo build --profile $PROFILE --locked --no-default-features --target $TARGET)"
# ring and mimalloc compile C: with musl-gcc for the musl target.
CC_x86_64_unknown_linux_musl=musl-gcc \
  cargo build --profile "$PROFILE" --locked --no-default-features --target "$TARGET" --bin xapi-stream

# The binary must be static, run, and be the engine alone.
kind=$(file -b "$BIN")
case $kind in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) die "$BIN is not static: $kind" ;;
esac
version=$("$BIN" --version) || die "$BIN --version failed"
"$BIN" --help >/dev/null || die "$BIN --help failed"
if "$BIN" sim --help >/dev/null 2>&1; then die "$BIN has the devkit (xapi-stream sim)"; fi
say "$version: $(stat -c %s "$BIN") bytes, ${kind%%, BuildID*}"

rm -rf "$STAGE"
mkdir -p "$STAGE"
install -m 0755 "$BIN" "$STAGE/xapi-stream"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$STAGE/ca-certificates.crt"
{
  echo "# config/default.toml of $version for the container image: both listeners on all"
  echo "# interfaces (8080: Webex-facing, 9090: admin API, /metrics, probes)."
  sed -e 's|^bind = "127.0.0.1:8080"$|bind = "0.0.0.0:8080"|' \
      -e 's|^admin_bind = ""$|admin_bind = "0.0.0.0:9090"|' config/default.toml
} > "$STAGE/config.toml"
chmod 0644 "$STAGE/config.toml"
grep -qx 'bind = "0.0.0.0:8080"' "$STAGE/config.toml" && grep -qx 'admin_bind = "0.0.0.0:9090"' "$STAGE/config.toml" \
  || die "config/default.toml no longer has bind = \"127.0.0.1:8080\" and admin_bind = \"\": update the sed above"
say "staged in $STAGE: $(cd "$STAGE" && echo *)"
