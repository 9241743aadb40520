"""Benchmarks: each prints one JSON object with its anchor measured in the same run."""
