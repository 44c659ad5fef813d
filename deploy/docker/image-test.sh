#!/usr/bin/env bash
# `make image-test`: build the image (build.sh), then run its entrypoint in the built root
# filesystem without a daemon (`buildah run --isolation chroot`, as the user the image declares,
# with the image's environment and working folder), and check it as a client would
# (image_probe.py: /ready, /health, /v1/models, a greedy completion from the default model and
# each demo adapter); then SIGTERM the server and require exit status 0 (a drain).
#
#   deploy/docker/image-test.sh [--no-build]      (VARIANT=cuda: the CUDA image)
#
# The server listens on 127.0.0.1 only, on a free port (`--host`/`--port` appended to the
# entrypoint, as `docker run IMAGE --port ...` would: the later option wins). The chroot shares
# this machine's network and PID namespace, so the signal goes straight to the server process.
# The CUDA image on a machine without an NVIDIA GPU serves with --device cpu: it checks the image
# and its CUDA build of torch, not the GPU path.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need buildah "$PYTHON"

[[ "${1:-}" == "--no-build" ]] || "$ROOT/deploy/docker/build.sh"
log="$WORK/image-test${SUFFIX}.log"
started=$SECONDS

# The image's own configuration: its entrypoint (NUL-separated) and its user.
image_config() {
    bah inspect --type image "$IMAGE" | "$PYTHON" -c "import json, sys
config = json.load(sys.stdin)['OCIv1']['config']
sys.stdout.write(''.join(a + '\0' for a in config['Entrypoint']) if sys.argv[1] == 'entrypoint'
                 else config.get('User', ''))" "$1"
}
mapfile -d '' -t entrypoint < <(image_config entrypoint)
[[ ${#entrypoint[@]} -gt 0 ]] || { echo "FAIL: no entrypoint in $IMAGE" >&2; exit 1; }
user="$(image_config user)"
if [[ -z "$user" || "$user" == 0* || "$user" == root* ]]; then
    echo "FAIL: the image declares no non-root user (USER: '$user')" >&2
    exit 1
fi
port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

ctr="$(bah from --name "loraplex-image-test-$$" "$IMAGE")"
runpid=""
cleanup() {
    if [[ -n "$runpid" ]] && kill -0 "$runpid" 2>/dev/null; then
        kill -KILL "$(server_pid)" 2>/dev/null || true
        wait "$runpid" 2>/dev/null || true
    fi
    bah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# buildah run -> buildah-chroot-runtime -> buildah-chroot-exec -> the entrypoint's process.
server_pid() {
    local pid="$runpid" depth
    for depth in 1 2 3 4 5; do
        pid="$(pgrep -P "$pid" | head -n 1)" || return 1
        if [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == buildah-chroot-exec* ]]; then
            pgrep -P "$pid" | head -n 1
            return
        fi
    done
    return 1
}

# Which torch the image holds: the CPU build in the cpu image, a CUDA build in the cuda one.
torch_build="$(bah run --isolation chroot "$ctr" -- python -c \
    'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
echo "torch in the image: $torch_build"
case "$VARIANT:$torch_build" in
    cpu:*"cuda None") ;;
    cuda:*"cuda None") echo "FAIL: the cuda image has a CPU-only torch" >&2; exit 1 ;;
    cuda:*) ;;
    *) echo "FAIL: the cpu image has a CUDA build of torch" >&2; exit 1 ;;
esac
extra=()
if [[ "$VARIANT" == cuda ]] && ! command -v nvidia-smi >/dev/null; then
    extra=(--device cpu)
    echo "no NVIDIA GPU here: serving the cuda image with --device cpu"
fi

echo "image-test: $IMAGE, entrypoint ${entrypoint[*]}, user $user, port $port, log in $log"
bah run --isolation chroot "$ctr" -- "${entrypoint[@]}" --host 127.0.0.1 --port "$port" \
    "${extra[@]}" >"$log" 2>&1 &
runpid=$!
for _ in $(seq 60); do server_pid >/dev/null && break; sleep 0.5; done
pid="$(server_pid)"
uid="$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")"
echo "server process $pid runs as uid $uid: $(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-120)"
[[ "$uid" == "${user%%:*}" && "$uid" != 0 ]] || { echo "FAIL: uid $uid, not $user" >&2; exit 1; }

"$PYTHON" "$ROOT/deploy/docker/image_probe.py" --url "http://127.0.0.1:$port" --pid "$pid" \
    || { tail -n 30 "$log" >&2; exit 1; }

kill -TERM "$pid"
stop=$SECONDS
set +e
wait "$runpid"
status=$?
set -e
runpid=""
echo "SIGTERM -> exit status $status after $((SECONDS - stop))s; image-test took $((SECONDS - started))s (after the build)"
if [[ $status -ne 0 ]]; then
    tail -n 30 "$log" >&2
    echo "FAIL: the server did not exit 0 on SIGTERM" >&2
    exit 1
fi
echo "image-test: PASS"
