#!/usr/bin/env bash
# make image-test: build the real Dockerfile on a CPU base image made on this machine (no
# registry image is pulled), then, with the network off as on a compute node, check the user,
# the kept torch, `lbtkit doctor`, and tiny CPU trainings (1 and 2 processes) in the container.
#
# Needs: a running Docker daemon; root and debootstrap to make the Debian root file system (once;
# or ROOTFS_IMAGE naming any local Debian-like image with python3 and python3-venv); pip access
# to cp311 wheels of torch and torchvision, which pip downloads on the host and serves to the
# base image's build from the host's loopback. The default pair is PyPI's (a CUDA build: about 6 GB installed, and on
# a CPU it behaves like the real image on a node without GPUs). Where PyTorch's CPU wheel index
# is configured, BASE_TORCH="torch==X+cpu torchvision==Y+cpu" makes a much smaller base (a
# CPU torch with PyPI's CUDA torchvision does not import). Base images are cached: only the
# first run is slow. Everything can be overridden from the environment, see below.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-.venv/bin/python}
ROOTFS_IMAGE=${ROOTFS_IMAGE:-lbtkit-local/debian:bookworm}
BASE_TORCH=${BASE_TORCH:-torch==2.14.1 torchvision==0.29.1}
BASE_IMAGE=${BASE_IMAGE:-lbtkit-local/torch:$(tr -c 'A-Za-z0-9_.\n-' _ <<< "${BASE_TORCH// /_}")}
TEST_IMAGE=${TEST_IMAGE:-lbtkit-local/lbtkit:image-test}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-}   # empty: debootstrap's default mirror
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}   # the host's, trusted by pip in builds

start=$SECONDS
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

step() { printf '\n== [%4ss] %s\n' "$((SECONDS - start))" "$*"; }
fail() { echo "image-test: FAILED: $*" >&2; exit 1; }
has_image() { "$DOCKER" image inspect "$1" > /dev/null 2>&1; }

"$DOCKER" info > /dev/null 2>&1 || fail "no Docker daemon reachable. Start one, e.g. as root:
  dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false &"

if has_image "$ROOTFS_IMAGE"; then
    step "root file system: $ROOTFS_IMAGE (cached)"
else
    step "root file system: debootstrap $DEBIAN_SUITE -> docker import $ROOTFS_IMAGE"
    [ "$(id -u)" = 0 ] || fail "debootstrap needs root (or set ROOTFS_IMAGE to a local image)"
    command -v debootstrap > /dev/null || fail "debootstrap is missing: apt-get install debootstrap"
    rootfs="$scratch/rootfs"
    # shellcheck disable=SC2086  # an empty DEBIAN_MIRROR must vanish
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$DEBIAN_SUITE" "$rootfs" $DEBIAN_MIRROR > "$scratch/debootstrap.log" 2>&1 \
        || { tail -20 "$scratch/debootstrap.log"; fail "debootstrap"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$DOCKER" import - "$ROOTFS_IMAGE" > /dev/null
    rm -rf "$rootfs"
fi

if has_image "$BASE_IMAGE"; then
    step "torch base: $BASE_IMAGE (cached)"
else
    step "torch base: $BASE_TORCH -> $BASE_IMAGE"
    mkdir -p "$scratch/base" "$scratch/wheels"
    cp "$CA_BUNDLE" "$scratch/base/ca-certificates.crt" || fail "no CA bundle at $CA_BUNDLE"
    # shellcheck disable=SC2086  # BASE_TORCH is a list of requirements
    "$PYTHON" -m pip download --quiet --dest "$scratch/wheels" \
        --python-version 3.11 --only-binary=:all: $BASE_TORCH
    # Serve the wheels on the loopback only, for the build (which shares the host network).
    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$scratch/wheels" "$port" \
        > "$scratch/http.log" 2>&1 &
    server=$!
    "$DOCKER" build --network=host --build-arg "ROOTFS_IMAGE=$ROOTFS_IMAGE" \
        --build-arg "WHEELS_URL=http://127.0.0.1:$port/" --build-arg "TORCH_REQUIREMENTS=$BASE_TORCH" \
        -f docker/base-torch.Dockerfile -t "$BASE_IMAGE" "$scratch/base" \
        || { kill "$server"; fail "building the base image"; }
    kill "$server"
    rm -rf "$scratch/base" "$scratch/wheels"
fi

step "the real Dockerfile on BASE_IMAGE=$BASE_IMAGE -> $TEST_IMAGE"
"$DOCKER" build --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$TEST_IMAGE" .

# Every check below runs offline, as on a compute node.
run() { "$DOCKER" run --rm --network=none "$@"; }
torch_version() {
    run --entrypoint python "$1" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
}

step "non-root user, base torch kept"
uid=$(run --entrypoint id "$TEST_IMAGE" -u)
[ "$uid" != 0 ] || fail "the image runs as root"
base_torch=$(torch_version "$BASE_IMAGE")
image_torch=$(torch_version "$TEST_IMAGE")
[ "$base_torch" = "$image_torch" ] || fail "torch changed: base $base_torch, image $image_torch"
echo "uid $uid; torch, torchvision: $image_torch (as in the base)"

step "lbtkit doctor (defaults: digits, no weights; expect exit 0)"
run "$TEST_IMAGE" doctor || fail "lbtkit doctor exited $?"

step "a host \$HOME with an Accelerate default config (as Apptainer mounts it) is ignored"
home="$scratch/home"
mkdir -p "$home/.cache/huggingface/accelerate"
echo "num_processes: 8" > "$home/.cache/huggingface/accelerate/default_config.yaml"
chmod -R a+rX "$home"
out=$(run -v "$home:/home/lbtkit:ro" "$TEST_IMAGE" doctor) || fail "doctor: $out"
grep -E '^ok +accelerate config' <<< "$out" || fail "stray config not ignored: $out"

step "doctor for the fine-tuning preset without data or weights (expect exit 1, fetch commands)"
set +e
out=$(run "$TEST_IMAGE" doctor --preset seed-mobilenetv2-finetune)
code=$?
set -e
echo "$out"
[ "$code" = 1 ] || fail "doctor exited $code, expected 1"
grep -q 'lbtkit fetch cifar10 --data-dir' <<< "$out" || fail "no cifar10 fetch command"
grep -q 'lbtkit fetch weights' <<< "$out" || fail "no weights fetch command"

step "tiny CPU training, 1 process, run directory bind-mounted from the host"
work="$scratch/work"
mkdir -p "$work" && chmod 0777 "$work"
run -v "$work:/work" "$TEST_IMAGE" run --preset smoke --output /work/runs/one --no-progress
step "tiny CPU training, 2 processes (accelerate launch, gloo) in the container"
run -v "$work:/work" -e GLOO_SOCKET_IFNAME=lo -e OMP_NUM_THREADS=1 "$TEST_IMAGE" \
    run --preset smoke --num-processes 2 --output /work/runs/two --no-progress
"$PYTHON" - "$work/runs" << 'EOF'
import json, sys
from pathlib import Path
for name, world in (("one", 1), ("two", 2)):
    results = json.loads((Path(sys.argv[1]) / name / "results.json").read_text())
    assert results["status"] == "completed", results["status"]
    assert results["world_size"] == world, results["world_size"]
    print(f"{name}: {results['status']}, world_size {world}, "
          f"val_acc {results['final']['val_acc']:.3f}")
EOF

step "image-test passed in $((SECONDS - start)) s ($TEST_IMAGE on $BASE_IMAGE)"
