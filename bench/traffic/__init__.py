"""What goes into a cell: scenarios (seeded drift), replays of captured hidden states, `capture`,
users' model tables and Hugging Face checkpoints, and the drift statistics of hidden states.

Must not import `ffnbench.bench.cells`, `ffnbench.bench.report` or `ffnbench.bench.gate`: inputs
know nothing of how they are measured, reported or gated.
"""
