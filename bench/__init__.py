"""Benchmark side: scenarios, runnables, metrics, timing, runs, reports, the CI gate and the CLI."""
