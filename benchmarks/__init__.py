"""Benchmarks of the DP fine-tuning step and of sampling and FID throughput (see README.md here)."""

from privimage.threads import configure_cpu_threads

# Before the benchmark modules import torch, as ``import privimage`` does (OpenMP wait policy, threads).
configure_cpu_threads()
