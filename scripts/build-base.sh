#!/usr/bin/env bash
# A local base image for docker/Dockerfile.* where no registry can be reached: Debian bookworm
# (minbase) with Python 3.11 and its venv module, made by debootstrap from Debian's packages and
# imported with buildah. Cached by content hash: the image is named after a hash of this script,
# so it is built once and again only when the recipe changes. Prints the image's name.
#   DEBIAN_MIRROR=http://deb.debian.org/debian scripts/build-base.sh
set -euo pipefail
SUITE=bookworm
PACKAGES=python3,python3-venv,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,ca-certificates
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
hash=$(sha256sum "$0" | cut -c1-12)
name=localhost/cerebro-base:$SUITE-$hash
if buildah inspect --type image "$name" >/dev/null 2>&1; then
  echo "base $name: cached" >&2
  echo "$name"
  exit 0
fi
for tool in debootstrap buildah; do
  command -v $tool >/dev/null || { echo "build-base.sh: $tool missing (apt-get install $tool)" >&2; exit 2; }
done
rootfs=$(mktemp -d /var/tmp/cerebro-base.XXXXXX)
ctr=
cleanup() { [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1; rm -rf "$rootfs"; }
trap cleanup EXIT
start=$(date +%s)
# python3.11-venv depends on python3.11-distutils, a name only python3-distutils provides, which
# debootstrap does not resolve: the package list names it.
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >&2
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/debootstrap
ctr=$(buildah from scratch)
cp -a "$rootfs/." "$(buildah mount "$ctr")/"
buildah umount "$ctr" >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
  --cmd /bin/bash --label "org.opencontainers.image.description=Debian $SUITE minbase + python3.11 (scripts/build-base.sh)" "$ctr"
buildah commit --quiet --format docker "$ctr" "$name" >/dev/null
echo "base $name: built in $(( $(date +%s) - start )) s" >&2
echo "$name"
