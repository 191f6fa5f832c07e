"""Throughput, latency and cost benchmark of the worker; see docs/benchmarks.md."""
