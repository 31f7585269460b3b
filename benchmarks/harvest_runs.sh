#!/bin/bash
# Copy the finished runs of a sweep folder (their done, out.txt, results.jsonl: no checkpoints) into a
# folder of committed records, e.g.
#   bash benchmarks/harvest_runs.sh /work/study_results/overcomplete docs/measured/sharing_study/overcomplete
set -euo pipefail
src=$1 dst=$2
mkdir -p "$dst"
n=0
for run in "$src"/*/; do
  name=$(basename "$run")
  [ -f "$run/done" ] || continue
  [ -f "$dst/$name/done" ] && continue
  mkdir -p "$dst/$name"
  cp "$run/results.jsonl" "$run/out.txt" "$dst/$name/"
  cp "$run/done" "$dst/$name/done"  # last, as a run writes it
  n=$((n + 1))
done
echo "copied $n finished runs into $dst ($(find "$dst" -mindepth 1 -maxdepth 1 -type d | wc -l) in all)"
