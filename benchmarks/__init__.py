"""Benchmarks of the DP fine-tuning step and of sampling and FID throughput (see README.md here)."""
