# Sourced by deploy/image/build.sh and test.sh: messages, apt-get installs, names.
# shellcheck shell=bash
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
IMAGE_NAME=${IMAGE_NAME:-xapi-stream}
OUT=$ROOT/target/image
# runc and explicit ulimits (see the file), for every podman/buildah call of these scripts.
export CONTAINERS_CONF=$ROOT/deploy/image/containers.conf

say() { printf '>> %s\n' "$*"; }
die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# apt_need "command-or-path package" ...: installs (apt-get, no recommends) the packages whose
# command (or absolute path) is missing.
apt_need() {
  local pair probe pkg missing=()
  for pair in "$@"; do
    probe=${pair%% *} pkg=${pair#* }
    if [[ $probe == /* ]]; then [ -e "$probe" ] && continue
    else command -v "$probe" >/dev/null 2>&1 && continue; fi
    missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} (apt-get)"
  local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The crate version (of the staged binary when there is one, else of Cargo.toml).
crate_version() {
  sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1
}
