# Shared by build.sh, base-image.sh and image-test.sh (sourced, not run): where buildah keeps its
# images, and the buildah command that uses it. Every image lives in its own storage under
# $LORAPLEX_IMAGE_WORK (default /var/tmp/loraplex-image), outside the repository, with the vfs
# driver (no overlay or fuse needed) and chroot isolation (no cgroups, no daemon).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${LORAPLEX_IMAGE_WORK:-/var/tmp/loraplex-image}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n 1)"
# VARIANT=cuda: the CUDA image (build.sh), tagged <version>-cuda.
VARIANT="${VARIANT:-cpu}"
case "$VARIANT" in
    cpu) SUFFIX="" ;;
    cuda) SUFFIX="-cuda" ;;
    *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 2 ;;
esac
IMAGE="${IMAGE:-localhost/loraplex:${VERSION}${SUFFIX}}"
# The stand-ins for python:3.11-slim and the CUDA runtime image (base-image.sh).
STANDIN_BASE="localhost/loraplex-base:bookworm-python3.11"
STANDIN_CUDA_BASE="localhost/loraplex-base:noble"
PYTHON="${PYTHON:-python3}"

bah() {
    buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs "$@"
}

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || {
            echo "$tool is missing: apt-get install -y buildah debootstrap (deploy/README.md)" >&2
            exit 2
        }
    done
}
