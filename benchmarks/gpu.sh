#!/usr/bin/env bash
# One-shot GPU benchmark (under 5 minutes on one H100/H200): run it on a machine with a GPU, from the
# repository root, with ../shared beside it. It installs the project if needed, prints the card, and writes
# JSON timings to ${OUT:-results/gpu}/gpu_timings.json (see benchmarks/gpu_timings.py for what is timed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu}"
mkdir -p "$OUT"
python -c "import resprobe" 2>/dev/null || python -m pip install -q -e ".[torchvision,timm]"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 280 python benchmarks/gpu_timings.py --device cuda | tee "$OUT/gpu_timings.json"
