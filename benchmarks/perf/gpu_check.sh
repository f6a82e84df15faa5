#!/usr/bin/env bash
# The GPU check of issue 10 (benchmarks/perf/gpu_check.py): the 7B-shaped RGPT stage-2 config in bf16, random
# init, LLM layers reduced to fit the GPU; tokens/s, MFU, and plan's memory estimate vs the measured peak.
# Run as is from any folder on a machine with one CUDA GPU (~2-4 min on an H100; stopped after 8 min):
#   bash benchmarks/perf/gpu_check.sh [gpu_check.py options]      → $OUT/gpu_check.json (else ./gpu_check.json)
# Options: --layers N (default: the most LLM layers plan fits in 80 % of the GPU; lower it if the run runs out
# of memory, which is itself a finding about plan), --micro-batch, --seq, --steps, --peak-tflops (dense bf16).
# Needs python3 with torch (CUDA), transformers, lightning, numpy, pillow, tokenizers and omegaconf; regionvlm
# itself is imported from this checkout (no install, no download). Packages the machine lacks travel as wheels
# in .whl/ at the repository root, installed from there first (on a machine without a package index:
# `pip download --no-deps -d .whl omegaconf==2.4.0` beforehand, elsewhere; PyYAML it needs is common).
set -euo pipefail
cd "$(dirname "$0")/../.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
missing=$(python3 -c '
import importlib.util as u
print(" ".join(m for m in ("torch", "transformers", "lightning", "omegaconf", "numpy", "PIL", "tokenizers")
               if u.find_spec(m) is None))')
if [ -n "$missing" ]; then
  echo "gpu_check: python3 lacks: $missing (put their wheels in .whl/, see the top of $0)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
exec timeout 480 python3 benchmarks/perf/gpu_check.py "$@"
