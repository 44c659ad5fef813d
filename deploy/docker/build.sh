#!/usr/bin/env bash
# `make image`: build the image from this checkout with buildah, without a daemon or a registry:
# vfs storage, chroot isolation, a stand-in base image (base-image.sh) unless BASE_IMAGE names a
# local one, and this machine's pip configuration (pip_sources.py). Docker's image format: OCI's
# has no HEALTHCHECK.
#
#   deploy/docker/build.sh [more buildah bud options]
#
# Environment:
#   VARIANT        cpu (default) or cuda: DEVICE=cuda, torch's default Linux build from the pip
#                  index (a CUDA one), on the Ubuntu 24.04 stand-in; tag <version>-cuda
#   IMAGE          tag (default localhost/loraplex:<version>[-cuda])
#   BASE_IMAGE     a local image to build on instead of the stand-in
#   TORCH_INDEX    default: this machine's pip index
#   TORCH_VERSION  default: the Dockerfile's; +cpu on the cpu variant (the CPU build, which must
#                  then be among pip's sources: download.pytorch.org/whl/cpu or a local wheel)
#   LAYERS         false (default): one container per stage, a cold build each time; true
#                  keeps every step as an image to reuse, but under vfs each is a full copy of
#                  the root filesystem (~30 GB a build here, and minutes to delete): avoid
#   LORAPLEX_IMAGE_WORK  storage, logs (default /var/tmp/loraplex-image)
# Writes the log and a summary (steps, time, size) to $LORAPLEX_IMAGE_WORK/build[-cuda].{log,summary}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need buildah "$PYTHON"

dockerfile_torch="$(sed -n 's/^ARG TORCH_VERSION=//p' "$ROOT/Dockerfile")"
variant_args=()
if [[ "$VARIANT" == cpu ]]; then
    standin="$STANDIN_BASE"
    TORCH_VERSION="${TORCH_VERSION:-${dockerfile_torch}+cpu}"
else
    standin="$STANDIN_CUDA_BASE"
    TORCH_VERSION="${TORCH_VERSION:-$dockerfile_torch}"
    variant_args=(--build-arg DEVICE=cuda)
fi
BASE_IMAGE="${BASE_IMAGE:-$standin}"
if [[ "$BASE_IMAGE" == "$standin" ]]; then
    "$ROOT/deploy/docker/base-image.sh" "$VARIANT"
fi
TORCH_INDEX="${TORCH_INDEX:-{index-url\}}"
layers="${LAYERS:-false}"
log="$WORK/build${SUFFIX}.log"
mkdir -p "$WORK"

echo "image: building $IMAGE from $BASE_IMAGE (torch $TORCH_VERSION), log in $log"
start=$SECONDS
set +e
nice -n 10 "$PYTHON" "$ROOT/deploy/docker/pip_sources.py" run -- \
    buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs \
    bud --isolation chroot --format docker --layers="$layers" {pip} \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "TORCH_INDEX=$TORCH_INDEX" \
    --build-arg "TORCH_VERSION=$TORCH_VERSION" \
    "${variant_args[@]}" "$@" --tag "$IMAGE" --file "$ROOT/Dockerfile" "$ROOT" 2>&1 \
    | while IFS= read -r line; do printf '[%ds] %s\n' $((SECONDS - start)) "$line"; done \
    | tee "$log" | grep --line-buffered -E '^\[[0-9]+s\] (\[[0-9]+/[0-9]+\] )?STEP|ERROR|rror:'
status=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - start))
if [[ $status -ne 0 ]]; then
    tail -n 30 "$log" >&2
    echo "image: build failed after ${elapsed}s (exit $status); full log in $log" >&2
    exit "$status"
fi
bah rmi --prune >/dev/null 2>&1 || true  # untagged images of earlier builds

{
    echo "image $IMAGE built in ${elapsed}s ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, layers=$layers)"
    echo "size: $(bah images --format '{{.Size}}' "$IMAGE" | head -n 1) (uncompressed)"
    echo "slowest steps (seconds, step):"
    # Each step's time runs to the next step's start; the last, to the end of the build (the
    # image's commit, then removing the stages' containers: minutes under vfs).
    awk -v end="$elapsed" '{ t = substr($1, 2) + 0 }
        / STEP [0-9]+\/[0-9]+: | COMMIT / {
            if (s != "") print t - t0, s
            t0 = t; s = substr($0, index($0, "] ") + 2, 90)
        }
        END { print end - t0, s " (and the clean-up)" }' "$log" \
        | sort -rn | head -n 6 | sed 's/^/  /'
    ctr="$(bah from "$IMAGE")"
    mnt="$(bah mount "$ctr")"
    echo "largest folders:"
    du -sh "$mnt/opt/venv" "$mnt/var/cache/loraplex" "$mnt/usr" "$mnt/app" 2>/dev/null \
        | sed "s|$mnt||; s/^/  /"
    bah umount "$ctr" >/dev/null
    bah rm "$ctr" >/dev/null
} | tee "$WORK/build${SUFFIX}.summary"
