#!/usr/bin/env bash
# The DP-step ratios on one CUDA GPU, beside the CPU ones: writes results/benchmarks/dp_step_gpu.json,
# dp_step_gpu.md and throughput_gpu.json. One command, a few minutes on a recent data-centre GPU:
#
#   ./benchmarks/gpu.sh            # extra options go to `python -m benchmarks`
#
# Physical batches of 256 images (128 at 6.1M): the paper's logical batch of 16,384
# (paper.yaml: finetune.batch_size) is accumulated from physical batches, and every
# step here compares the three methods on the same B images with the same K draws.
# Where the DPDM baseline's B*K per-row gradients do not fit in GPU memory, its
# row records the out-of-memory error instead of a number.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
exec python -W ignore -m benchmarks --device cuda --threads 4 --suffix _gpu --out results/benchmarks \
  --configs quick:1:256 1.8M:3:256 6.1M:3:128 --multiplicities 1 8 --steps 20 --warmup 2 \
  --engines quick:1:256 --engine-steps 10 \
  --ddim-models quick:1 6.1M:3 --ddim-images 500 --fid-offline-images 5000 --fid-inception-images 500 \
  --throughput-repeats 3 "$@"
