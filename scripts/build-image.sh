#!/usr/bin/env bash
# Build a Cerebro image with buildah from docker/Dockerfile.<kind>, offline as far as this machine
# allows: the base is made from Debian's packages (scripts/build-base.sh, cached by content hash)
# unless BASE is given, and pip reads this machine's own index, mirrors and CA bundle, passed in as
# build args with their folders mounted read-only (nothing is copied into the image).
#
#   scripts/build-image.sh cpu [--target worker|search] [-t cerebro-cpu:dev]
#   scripts/build-image.sh gpu [-t cerebro-gpu:dev]
#   scripts/build-image.sh gpu --print-tag                 # the default name, nothing built
#   BASE=python:3.11-slim-bookworm scripts/build-image.sh cpu     # where a registry can be reached
#
# Prints the image's name on its last line. With Docker instead: docker build -f docker/Dockerfile.cpu .
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: scripts/build-image.sh cpu|gpu [--target T] [-t TAG]}
shift
target= tag= print_tag=
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=$2; shift 2 ;;
    -t|--tag) tag=$2; shift 2 ;;
    --print-tag) print_tag=1; shift ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -f "docker/Dockerfile.$kind" ] || { echo "build-image.sh: no docker/Dockerfile.$kind" >&2; exit 2; }
name=cerebro-$kind
[ "$target" = search ] && name=cerebro-search  # the names docker/docker-compose.yml uses
# the names docker/docker-compose.yml, prefect.yaml and deployments/*.json use (buildah stores an
# unqualified name as localhost/NAME; docker as docker.io/library/NAME: both find it by this name)
tag=${tag:-$name:dev}
[ -n "$print_tag" ] && { echo "$tag"; exit 0; }
base=${BASE:-$(scripts/build-base.sh | tail -n 1)}

# This machine's pip settings (pip config and PIP_* variables), as the image's pip will see them.
pip_get() { python3 -m pip config get "global.$1" 2>/dev/null || true; }
index=${PIP_INDEX_URL:-$(pip_get index-url)}
extra=${PIP_EXTRA_INDEX_URL:-$(pip_get extra-index-url)}
links=${PIP_FIND_LINKS:-$(pip_get find-links)}
cert=${PIP_CERT:-$(pip_get cert)}
args=(--build-arg "BASE=$base")
vols=()
mount_local() {  # a file:// URL or a path: mounted read-only at the same path inside the build
  local p=${1#file://}
  p=${p%/}
  case "$p" in */simple) p=${p%/simple} ;; esac  # a PEP 503 index links to files beside it
  if [ -e "$p" ]; then vols+=(--volume "$p:$p:ro"); fi
}
for u in $extra $links; do mount_local "$u"; done
[ -n "$index" ] && { args+=(--build-arg "PIP_INDEX_URL=$index"); mount_local "$index"; }
[ -n "$extra" ] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=$(echo $extra)")
[ -n "$links" ] && args+=(--build-arg "PIP_FIND_LINKS=$(echo $links)")
if [ -n "$cert" ] && [ -f "$cert" ]; then  # a proxy's or mirror's CA, at a path the base does not use
  vols+=(--volume "$cert:/etc/cerebro-build-ca.crt:ro")
  args+=(--build-arg "PIP_CERT=/etc/cerebro-build-ca.crt")
fi
# The CPU image takes torch from PyTorch's CPU index unless TORCH_INDEX_URL says otherwise (empty:
# from the index above, i.e. a mirror's CUDA build where the CPU index cannot be reached).
if [ "$kind" = cpu ] && [ -n "${TORCH_INDEX_URL+set}" ]; then args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"); fi

start=$(date +%s)
buildah bud --format docker --isolation chroot --layers -f "docker/Dockerfile.$kind" ${target:+--target "$target"} \
  "${args[@]}" "${vols[@]}" -t "$tag" . >&2
echo "built $tag in $(( $(date +%s) - start )) s: $(buildah images --format '{{.Size}}' "$tag")" >&2
echo "$tag"
