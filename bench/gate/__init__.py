"""The CI gate: checks parsed from strings, the gate against a baseline and its gate.md and JUnit,
`compare --remeasure`, re-measurement workers in other environments, and the scripts that measure
the gate and harness themselves (reliability, fidelity, time targets).

Must not import `ffnbench.bench.report`: the gate writes its own gate.md.
"""
