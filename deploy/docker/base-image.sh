#!/usr/bin/env bash
# Stand-ins for the Dockerfile's BASE_IMAGE where no registry is reachable, made by debootstrap
# from the distribution's archive and imported as local images (done once; --force again):
#
#   deploy/docker/base-image.sh [cpu|cuda] [--force]
#
#   cpu:  $STANDIN_BASE, for python:3.11-slim: Debian bookworm with Python 3.11 and venv.
#         It differs in Debian's Python (/usr/bin/python3, no `python` before the venv, no
#         headers); neither matters to the CPU image (its kernel is plain C, loaded with ctypes).
#   cuda: $STANDIN_CUDA_BASE, for nvidia/cuda:12.8.1-runtime-ubuntu24.04: Ubuntu 24.04 without
#         Python (the Dockerfile installs it from apt, as on the real one) and without NVIDIA's
#         CUDA runtime libraries (NVIDIA's registry and apt repository are out of reach); torch's
#         CUDA wheels bring their own (nvidia-* packages), so what this cannot show is only what
#         NVIDIA's image adds beyond them. Debian has no Ubuntu keyring: the Release file is not
#         signature-checked here (--no-check-gpg); apt inside then checks with ubuntu-keyring.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), UBUNTU_MIRROR (default
# http://archive.ubuntu.com/ubuntu).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need buildah debootstrap

flavour=cpu force=""
for arg in "$@"; do
    case "$arg" in
        cpu | cuda) flavour="$arg" ;;
        --force) force=1 ;;
        *) echo "usage: $0 [cpu|cuda] [--force]" >&2; exit 2 ;;
    esac
done
if [[ "$flavour" == cpu ]]; then
    image="$STANDIN_BASE"
    mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    suites=(bookworm bookworm-updates)
    security="deb http://deb.debian.org/debian-security bookworm-security main"
    debootstrap_args=(--include=python3.11,python3-venv,ca-certificates bookworm)
    script=()
else
    image="$STANDIN_CUDA_BASE"
    mirror="${UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}"
    suites=(noble noble-updates noble-security)
    security=""
    # This debootstrap predates noble; its script is the one every Ubuntu release since gutsy uses.
    debootstrap_args=(--no-check-gpg --components=main,universe --include=ca-certificates noble)
    script=(/usr/share/debootstrap/scripts/gutsy)
fi

if [[ -z "$force" ]] && bah inspect --type image "$image" >/dev/null 2>&1; then
    echo "base image: $image (exists; --force makes it again)"
    exit 0
fi
start=$SECONDS
rootfs="$WORK/base-rootfs"
rm -rf "$rootfs" "$WORK/base-rootfs.tar"
mkdir -p "$WORK"
echo "base image: debootstrap ${debootstrap_args[*]: -1} from $mirror (log: $WORK/debootstrap.log)"
nice -n 10 debootstrap --variant=minbase "${debootstrap_args[@]}" "$rootfs" "$mirror" \
    "${script[@]}" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
# As the slim images: every suite of the release; no package lists or downloaded .debs.
{
    for suite in "${suites[@]}"; do
        echo "deb $mirror $suite main$([[ $flavour == cuda ]] && echo " universe")"
    done
    [[ -z "$security" ]] || echo "$security"
} >"$rootfs/etc/apt/sources.list"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" --numeric-owner -cf "$WORK/base-rootfs.tar" .
rm -rf "$rootfs"

ctr="$(bah from scratch)"
trap 'bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
bah add --quiet "$ctr" "$WORK/base-rootfs.tar" / >/dev/null
bah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --label "org.opencontainers.image.description=loraplex stand-in base ($flavour)" \
    "$ctr"
bah commit --quiet "$ctr" "$image" >/dev/null
rm -f "$WORK/base-rootfs.tar"
echo "base image: $image, made in $((SECONDS - start))s"
