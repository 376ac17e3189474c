"""What a cell measures, through a subject (subject.py: artifact identity, caching, mitigated
models, runnables; one subclass a kind of model): accuracy (metrics, runnables in torch, ONNX
Runtime and bitsandbytes), latency (the interleaved harness and its cells), whole-model cells (lm:
the trained pair; whole: users' Hugging Face and GGUF models), memory probes in child processes,
artifact prebuild workers, and which timed cells get a kernel-path diagnosis.

Must not import `ffnbench.bench.report` or `ffnbench.bench.gate`: a cell is measured the same
whether or not anyone reports or gates it.
"""
