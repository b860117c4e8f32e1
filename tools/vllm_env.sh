#!/usr/bin/env bash
# The virtual environment that runs vLLM's CPU build for tools/check_vllm.py and bench/bench_generate_engines.py:
# built once from requirements-vllm.txt, reused while that file is unchanged. Prints its python.
#
#   bash tools/vllm_env.sh                      # .venv-vllm in the repository (git-ignored)
#   VLLM_VENV=/opt/venvs/vllm bash tools/vllm_env.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VLLM_VENV:-$repo/.venv-vllm}"
requirements="$repo/requirements-vllm.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$venv/bin/python"
    exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
# --no-deps: the file pins every package, so pip resolves nothing and leaves out what it leaves out.
"$venv/bin/python" -m pip install -q --no-deps -r "$requirements" >&2
"$venv/bin/python" -c "import vllm" >&2
echo "$want" > "$stamp"
echo "$venv/bin/python"
