"""report.md and its plots: the decision table and verdict, the latency, memory and kernel-path
part, the downstream (trained pair) part, users' whole models, and number formatting.

Must not import `ffnbench.bench.gate`: a report reads a run, never a verdict on it.
"""
