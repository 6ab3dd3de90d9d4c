#!/usr/bin/env bash
# `make gpu-test`: on a machine with an NVIDIA GPU, build the fork with vLLM's
# own setup.py in its precompiled mode against the official vllm wheel (as
# `forktool build-check` does, but editable), then run the patch's generation
# tests on CUDA (float32, token for token against the references) and the
# caption job on the tiny fixtures of both families; then the plugin wheel
# with the official wheel (its engine-free and generation tests on CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

if ! nvidia-smi -L; then
  echo "gpu-test: no NVIDIA GPU found (nvidia-smi failed); run it on a GPU machine." >&2
  exit 2
fi
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "venv (pinned, CUDA build of torch 2.13.0) and tiny checkpoints"
make --no-print-directory venv fixtures
step "vLLM's build of the fork, precompiled from the official wheel"
python3 -m forktool build-check --editable

PY=$REPO/build/build-check/venv/bin/python
export HF_HOME=$REPO/build/hf HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset VLLM_TARGET_DEVICE
cd build/build-check/src
"$PY" - <<'EOF'
import importlib.metadata, torch
from vllm.platforms import current_platform
print(f"vllm {importlib.metadata.version('vllm')} on {current_platform.device_name}"
      f" ({torch.cuda.get_device_name(0)}), torch {torch.__version__}")
assert current_platform.is_cuda(), "vLLM did not select its CUDA platform"
EOF

step "generation tests on CUDA (float32, greedy tokens identical to the references)"
"$PY" -m pytest -q -p no:cacheprovider \
  tests/models/multimodal/generation/test_tarsier.py \
  tests/models/multimodal/generation/test_tarsier2.py

for model in omni-research/Tarsier-7b omni-research/Tarsier2-Recap-7b; do
  step "caption job: $model (auto dtype)"
  "$PY" examples/generate/multimodal/tarsier_video_caption.py --model "$model"
done
cd "$REPO"
step "the vllm-tarsier plugin with the official vllm wheel, on CUDA"
python3 -m forktool official --gpu 0.32.0
step "gpu-test passed"
