#!/usr/bin/env bash
# Download the wheels bench/gpu_check.sh --wheels DIR installs on a GPU machine that cannot reach PyPI.
#
#   bench/gpu/fetch_wheels.sh DIR                    # for Python 3.12 on manylinux x86_64
#   PY_VERSION=3.10 bench/gpu/fetch_wheels.sh DIR    # for another target Python
#   TARGET_PYTHON=/path/to/python3.12 bench/gpu/fetch_wheels.sh DIR   # the interpreter for the offline check
#
# Exactly bench/gpu/requirements-gpu-check.txt, for the target's Python and platform (not this machine's),
# binary wheels only, without dependencies (that file lists them: pip would otherwise fetch torch, which
# the target already has and must keep). Then checks that the directory serves gpu_check.sh's offline
# install (pip install --no-index --no-deps) for that target, as a dry run in a scratch environment.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: bench/gpu/fetch_wheels.sh DIR" >&2; exit 2; }
DIR=$1
PY=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
REQ=$(cd "$(dirname "$0")" && pwd)/requirements-gpu-check.txt
mkdir -p "$DIR"

# pip matches manylinux tags exactly: list the glibc versions a current x86_64 machine accepts.
PLATFORMS=()
for tag in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
"$PY" -m pip download --no-deps --only-binary=:all: --implementation cp --python-version "$PY_VERSION" \
  --platform manylinux2014_x86_64 "${PLATFORMS[@]}" -d "$DIR" -r "$REQ"

# The offline check needs an interpreter of the target's version here (TARGET_PYTHON names one);
# without one it says so and stops.
TARGET_PY=${TARGET_PYTHON:-python$PY_VERSION}
if ! "$TARGET_PY" -c "" 2> /dev/null; then
  echo "fetch_wheels: downloaded to $DIR; no working $TARGET_PY here to check that it resolves offline" >&2
  exit 0
fi
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
"$TARGET_PY" -m venv "$SCRATCH/venv"
# The install gpu_check.sh --wheels runs, as a dry run: every listed requirement must have a wheel here.
"$SCRATCH/venv/bin/python" -m pip install -q --dry-run --no-index --no-deps --find-links "$DIR" -r "$REQ" \
  --report "$SCRATCH/report.json"
"$SCRATCH/venv/bin/python" - "$SCRATCH/report.json" <<'EOF'
import json
import sys

names = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in json.load(open(sys.argv[1]))["install"]]
print("fetch_wheels: resolves offline for this Python; would install: " + ", ".join(names))
EOF
