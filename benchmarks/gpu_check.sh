#!/usr/bin/env bash
# The GPU check, in at most ~8 minutes on one CUDA machine: the CUDA tests (tests/test_cuda.py), then one
# training epoch of every model on the complete Diginetica and Gowalla splits beside the paper's RTX 3090
# times, with the bf16 scoring effect for Atten-Mixer (benchmarks/gpu_epochs.py), until the budget runs out.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on the CUDA machine
#
# Writes gpu_check.log, gpu_epochs.json and pytest.xml into ${OUT:-gpu-check-out}/. Exits non-zero if the
# CUDA tests fail (the timing part runs anyway). Settings from the environment:
#   PYTHON (default python3)  SBR_GPU_CHECK_S (total seconds, default 480)  SBR_WHEELS (wheel folder, default
#   wheels/)  SBR_TORCH_INDEX (a CUDA torch index, default PyTorch's cu128 one)  SBR_EPOCHS_ARGS (extra
#   gpu_epochs.py options, later ones win, e.g. "--precision-models attenmixer,srgnn --datasets diginetica")
# Data: ../shared/datasets, a prepared datasets/NAME, or the processed .npz files that
# `python benchmarks/gpu_epochs.py --prepare-only` names (carried into datasets/).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-gpu-check-out}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
LIMIT=${SBR_GPU_CHECK_S:-480}
PY=${PYTHON:-python3}
WHEELS=${SBR_WHEELS:-wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
left() { echo $((LIMIT - SECONDS)); }
step() { echo; echo "== [${SECONDS}s of ${LIMIT}s] $*"; }
pip_install() {  # local wheels when there are any, else the registry
  if [ -d "$WHEELS" ]; then "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$@"
  else timeout 240 "$PY" -m pip install -q --retries 1 --timeout 15 "$@"; fi  # offline: fail fast
}

step "GPU"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,utilization.gpu --format=csv \
  || echo "nvidia-smi failed or is absent"

if ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  step "installing a CUDA torch (this python's torch sees no GPU)"
  if [ -d "$WHEELS" ]; then pip_install torch
  else pip_install torch==2.13.0 --index-url "${SBR_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}" \
    || pip_install torch==2.13.0; fi || echo "could not install a CUDA torch"  # PyPI's Linux torch is a CUDA build
fi
if ! "$PY" -c "import sbr_bench.cli, torch_geometric, pandas, scipy, matplotlib, tqdm, pytest" 2>/dev/null; then
  step "installing sbr-bench and its test dependencies"
  pip_install -e '.[test]' || pip_install -e . pytest || echo "install failed; going on with what is there"
fi
"$PY" - <<'EOF' || { echo "torch cannot use a GPU here: nothing to check"; exit 2; }
import torch, torch_geometric
try:
    nccl = ".".join(map(str, torch.cuda.nccl.version()))
except Exception as e:  # a build without NCCL
    nccl = f"none ({type(e).__name__})"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}, "
      f"PyG {torch_geometric.__version__}")
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
EOF

step "CUDA tests"
tests_rc=0
timeout $(( $(left) > 330 ? 180 : $(left) / 2 )) "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py \
  --junitxml="$OUT_DIR/pytest.xml" -rs || tests_rc=$?
echo "CUDA tests exit status: $tests_rc"

budget=$(( $(left) - 30 ))  # for the children; the rest: the tables and the timeout's margin
step "one epoch per model (budget ${budget}s)"
epochs_rc=0
if [ "$budget" -lt 30 ]; then echo "no time left for the epochs"; epochs_rc=3
else
  # shellcheck disable=SC2086  # SBR_EPOCHS_ARGS is a list of options
  timeout $(( budget + 20 )) "$PY" benchmarks/gpu_epochs.py --device cuda --datasets diginetica,gowalla \
    --precision fp32,bf16 --precision-models attenmixer --budget-s "$budget" \
    --json "$OUT_DIR/gpu_epochs.json" ${SBR_EPOCHS_ARGS:-} || epochs_rc=$?
fi

step "done: CUDA tests $([ "$tests_rc" = 0 ] && echo passed || echo "FAILED ($tests_rc)"), epochs exit $epochs_rc"
[ "$tests_rc" = 0 ] || exit 1
exit "$epochs_rc"
