"""What goes into a cell: scenarios (seeded drift), replays of captured hidden states, `capture`,
users' model tables, Hugging Face checkpoints and GGUF files (whole models loaded and rebuilt), tiny
stand-ins of them, and the drift statistics of hidden states and massive activations.

Must not import `ffnbench.bench.cells`, `ffnbench.bench.report` or `ffnbench.bench.gate`: inputs
know nothing of how they are measured, reported or gated.
"""
