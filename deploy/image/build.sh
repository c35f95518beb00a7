#!/usr/bin/env bash
# make image: the xapi-stream OCI image, without a container daemon and without a registry.
#
#  1. deploy/image/stage.sh builds the static musl binary of the engine alone (no devkit) and
#     stages it with Debian's CA bundle and the container configuration in target/image/stage/.
#  2. `buildah bud` builds deploy/Dockerfile's default stage (FROM scratch, nothing pulled) into
#     the local containers storage (/var/lib/containers as root), tagged
#     xapi-stream:<version> and xapi-stream:<version>-<short git revision>.
#  3. The image is exported as target/image/xapi-stream-<version>.oci.tar (an OCI archive:
#     `podman load -i`, `skopeo copy oci-archive:... docker://registry/...`).
# Prints the compressed and uncompressed size and the digests.
#
# Installs what is missing (apt-get: buildah, skopeo, runc, uidmap, containernetworking-plugins,
# python3; stage.sh: musl-tools, ca-certificates, file and the Rust musl target).
# Env: IMAGE_NAME (xapi-stream), SOURCE (org.opencontainers.image.source; default: the git
# remote origin), SOURCE_DATE_EPOCH (image and file timestamps; default: the commit's time).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
START=$(date +%s)

# containernetworking-plugins: buildah and podman need a network stack (the alternative,
# netavark, is what apt would otherwise pick; test.sh is tested with CNI).
apt_need "buildah buildah" "skopeo skopeo" "runc runc" "newuidmap uidmap" \
  "/usr/lib/cni/bridge containernetworking-plugins" "python3 python3"

bash deploy/image/stage.sh
STAGE=$OUT/stage
VERSION=$("$STAGE/xapi-stream" --version | awk '{print $2}')
[ -n "$VERSION" ] || die "no version from $STAGE/xapi-stream --version"
if REVISION=$(git rev-parse HEAD 2>/dev/null); then
  SHORT=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- 2>/dev/null || say "note: the working tree differs from $SHORT (the image says revision $SHORT)"
  EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
else
  REVISION=unknown SHORT=nogit EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)}
fi
SOURCE=${SOURCE:-$(git remote get-url origin 2>/dev/null || true)}
TAG=$IMAGE_NAME:$VERSION
TAGS=("$TAG" "$IMAGE_NAME:$VERSION-$SHORT")

OLD_ID=$(buildah images --noheading --no-trunc --format '{{.ID}}' "$TAG" 2>/dev/null | head -1 || true)
say "buildah bud -f deploy/Dockerfile (last stage, FROM scratch) -> ${TAGS[*]}"
# --timestamp: the same binary gives the same image (created time and file times from the commit).
# --isolation chroot: the default stage runs nothing, but the builder stage would, without a daemon.
buildah bud --quiet --isolation chroot --pull=never --timestamp "$EPOCH" \
  -f deploy/Dockerfile \
  --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg SOURCE="$SOURCE" \
  "${TAGS[@]/#/--tag=}" . >/dev/null

ID=$(buildah images --noheading --no-trunc --format '{{.ID}}' "$TAG" | head -1)
# The image this build replaced under the same tag, if nothing else names it now.
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$ID" ] \
  && [ -z "$(buildah images --noheading --format '{{.Name}}' --filter "id=${OLD_ID#sha256:}" 2>/dev/null | grep -v '<none>' || true)" ]; then
  buildah rmi "$OLD_ID" >/dev/null 2>&1 || true
fi

ARCHIVE=$OUT/$IMAGE_NAME-$VERSION.oci.tar
rm -f "$ARCHIVE"
say "exporting $ARCHIVE (buildah push oci-archive:)"
buildah push --quiet "$TAG" "oci-archive:$ARCHIVE:$TAG"

# Sizes from the manifests: the archive's layers are gzip-compressed (as a registry stores
# them), the local storage's are plain tar.
read -r COMPRESSED DIGEST < <(skopeo inspect --raw "oci-archive:$ARCHIVE" | python3 -c '
import hashlib, json, sys
raw = sys.stdin.buffer.read()
print(sum(l["size"] for l in json.loads(raw)["layers"]), "sha256:" + hashlib.sha256(raw).hexdigest())')
read -r UNCOMPRESSED LAYERS < <(skopeo inspect --raw "containers-storage:localhost/$TAG" 2> >(grep -v "using prior storage driver" >&2) | python3 -c '
import json, sys
layers = json.load(sys.stdin)["layers"]
print(sum(l["size"] for l in layers), len(layers))')
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }

cat <<EOF
>> image ${TAGS[*]} (localhost/, in the local containers storage)
   revision         $REVISION
   layers           $LAYERS, $COMPRESSED bytes compressed ($(mb "$COMPRESSED")), $UNCOMPRESSED bytes uncompressed ($(mb "$UNCOMPRESSED"))
   image id         ${ID#sha256:} (config digest)
   manifest digest  $DIGEST (of the OCI archive; a registry keeps it when skopeo copy does not recompress)
   archive          ${ARCHIVE#"$ROOT"/} ($(stat -c %s "$ARCHIVE") bytes)
   built in         $(($(date +%s) - START)) s
EOF
