#!/usr/bin/env bash
# Build the cubes' image with podman and run one task in it the way MedPerf runs it.
#
#   make container-test        (or: bash containers/container-test.sh)
#
# No registry is needed: the base image is a Debian root file system made by debootstrap
# from Debian's packages, imported into podman. Then the repository's Dockerfile is built on
# it, and the Data Preparator runs prepare and statistics in it with the exact `podman run`
# command MedPerf would build from mlcubes/data_preparator/container_config.yaml: inputs
# read-only, outputs and a scratch /tmp the only writable mounts, no network, an
# unprivileged user. Needs root, podman, runc and debootstrap
# (Debian: apt-get install podman runc debootstrap).
#
# Settings (environment): CXR_BUILD (default .container-build, git-ignored) holds the root
# file system and the task outputs; CXR_SUITE (bookworm) and CXR_MIRROR choose the Debian
# release and mirror; CXR_PIP_CERT is a certificate bundle handed to pip during the build
# (default: $PIP_CERT, if set).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${CXR_BUILD:-.container-build}
SUITE=${CXR_SUITE:-bookworm}
MIRROR=${CXR_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/cxr-tutorial-base:$SUITE
IMAGE=localhost/cxr-tutorial/data-preparator:test
PYTHON=${PYTHON:-.venv/bin/python}
# runc, and explicit limits: podman's defaults (nofile 1048576, nproc as the host's) exceed
# what some sandboxes let runc set, and the container then does not start. nofile is this
# shell's hard limit; nproc 8192 is plenty for a CPU task (the host's own hard limit was
# refused where this was tried).
NOFILE=$(ulimit -Hn); NPROC=8192
ENGINE_OPTS=(--runtime runc --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")

for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || {
        echo "container-test: $tool not found (Debian: apt-get install podman runc debootstrap)" >&2
        exit 1
    }
done
[ "$(id -u)" = 0 ] || { echo "container-test: run as root (debootstrap, podman)" >&2; exit 1; }
mkdir -p "$BUILD"
BUILD=$(cd "$BUILD" && pwd)

step() { echo; echo "== $* ($(date +%T))"; }

if ! podman image exists "$BASE"; then
    if [ ! -x "$BUILD/rootfs/usr/bin/python3" ]; then
        step "debootstrap $SUITE into $BUILD/rootfs"
        rm -rf "$BUILD/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
            "$SUITE" "$BUILD/rootfs" "$MIRROR" > "$BUILD/debootstrap.log"
        rm -rf "$BUILD"/rootfs/var/cache/apt/archives/*.deb "$BUILD"/rootfs/var/lib/apt/lists/*
    fi
    # requirements.lock needs Python 3.11.5 or newer; Debian 12 ships 3.11.2, so this
    # machine's own Python 3.11 (the one behind .venv) goes into /usr/local, as in the
    # official python:3.11 images, without its site-packages and test suite.
    prefix=$("$PYTHON" -c 'import sys; print(sys.base_prefix)')
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    full=$("$PYTHON" -c 'import platform; print(platform.python_version())')
    step "copy Python $full from $prefix into the root file system"
    tar -C "$prefix" -c --exclude "lib/python$version/site-packages/*" \
        --exclude "lib/python$version/test" bin/python3 "bin/python$version" lib include \
        | tar -C "$BUILD/rootfs/usr/local" -x
    chroot "$BUILD/rootfs" ldconfig
    step "import the root file system as $BASE"
    tar -C "$BUILD/rootfs" -c . | podman import - "$BASE"
fi

step "build $IMAGE from Dockerfile"
CERT=${CXR_PIP_CERT:-${PIP_CERT:-}}
SECRET=()
[ -n "$CERT" ] && [ -f "$CERT" ] && SECRET=(--secret "id=pip_cert,src=$CERT")
start=$(date +%s)
podman build "${ENGINE_OPTS[@]}" --network host "${SECRET[@]}" \
    --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" -f Dockerfile .
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
echo "built in $(( $(date +%s) - start )) s; image size: $size bytes"

step "prepare and statistics in the container, as MedPerf runs them"
RUN=$BUILD/run
rm -rf "$RUN" && mkdir -p "$RUN/tmp"
# The container runs as an unprivileged user (the image's, uid 10001) that owns only its
# outputs and /tmp, as MedPerf's caller does; inputs stay root's and mounted read-only.
"$PYTHON" - "$RUN" "$IMAGE" <<'PY'
import json, sys
from pathlib import Path
from cxr_tutorial.containers import container_config, medperf_run_command
from cxr_tutorial.mlcube import load_cube

run, image = Path(sys.argv[1]), sys.argv[2]
config = container_config(load_cube("mlcubes/data_preparator"))
params = Path("mlcubes/data_preparator/workspace/parameters.yaml").resolve()
demo = Path("demo_data").resolve()
tasks = {
    "prepare": {"data_path": demo / "images", "labels_path": demo / "labels",
                "parameters_file": params, "output_path": run / "data",
                "output_labels_path": run / "labels"},
    "statistics": {"data_path": run / "data", "labels_path": run / "labels",
                   "parameters_file": params, "output_path": run / "statistics.yaml"},
}
commands = {task: medperf_run_command(config, task, paths, run / "tmp", "10001:10001",
                                      engine="podman", image=image)
            for task, paths in tasks.items()}
(run / "commands.json").write_text(json.dumps(commands, indent=1))
PY
chown 10001:10001 "$RUN/tmp" "$RUN/data" "$RUN/labels" "$RUN/statistics.yaml"
for task in prepare statistics; do
    mapfile -t cmd < <("$PYTHON" -c 'import json, sys
print("\n".join(json.load(open(sys.argv[1]))[sys.argv[2]]))' "$RUN/commands.json" "$task")
    # MedPerf's command, with podman's runtime and limits added after `run`.
    cmd=("${cmd[0]}" run "${ENGINE_OPTS[@]}" "${cmd[@]:2}")
    echo "\$ ${cmd[*]}"
    start=$(date +%s)
    "${cmd[@]}"
    echo "$task: done in $(( $(date +%s) - start )) s"
    # The executed notebook is the task's log; MedPerf keeps /tmp, so do we.
    cp "$RUN/tmp"/cxr-tutorial-run-*/*.ipynb "$RUN/" 2>/dev/null || true
    rm -rf "$RUN"/tmp/cxr-tutorial-run-*
done

step "check the outputs"
"$PYTHON" - "$RUN" <<'PY'
import sys
from pathlib import Path
import yaml
run = Path(sys.argv[1])
stats = yaml.safe_load((run / "statistics.yaml").read_text())
cases = len((run / "data" / "cases.csv").read_text().splitlines()) - 1
assert cases == 16 and stats["n_cases"] == 16, (cases, stats)
print(f"prepared {cases} cases; statistics.yaml: {stats['cases_per_class']}")
PY
echo "container-test passed: $IMAGE ran prepare and statistics under MedPerf's constraints"
