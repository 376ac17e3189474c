"""The machine a run measures on: `doctor`, CPU ISA and machine class, measured peaks, the U8S8
saturation probe, kernel-path profiles and explanations, and whether a run fits in memory.

Must not import `ffnbench.bench.cells`, `ffnbench.bench.report` or `ffnbench.bench.gate`: a cell's
runnable reaches a profiler as an argument.
"""
