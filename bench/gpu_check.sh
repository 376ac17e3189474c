#!/usr/bin/env bash
# The GPU check, as one short script for a lent H200 (or any CUDA machine with ffnbench importable):
# the quick preset on CUDA, then the fp16 stability cells. Under 5 minutes on one H200 is the target.
#   bench/gpu_check.sh OUT_DIR
# Writes OUT_DIR/quick and OUT_DIR/fp16 (results.jsonl, report.md, plots) and OUT_DIR/doctor.json.
set -euo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
# -P: not the checkout's own ffnbench/ folder (cwd) before the installed package, which maps
# ffnbench.bench and the others to their folders; found on a GPU machine's editable install.
ffnbench=("${PYTHON:-python3}" -P -m ffnbench)
mkdir -p "$out"
"${ffnbench[@]}" doctor --json --device cuda > "$out/doctor.json"
time "${ffnbench[@]}" run --preset quick --device cuda --out "$out/quick"
time "${ffnbench[@]}" run --config examples/fp16-stability.toml --device cuda --out "$out/fp16"
