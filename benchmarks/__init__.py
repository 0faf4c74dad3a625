"""actstore benchmarks (``python -m benchmarks.bench_store``) and their shared data generator."""
