#!/bin/bash
# Every number of docs/real_images.md for one plateau sweep, from its committed records: copies the finished
# runs of RESULTS/NAME and RESULTS/NAME_probe into docs/measured (records only), then writes there the curves
# (curve.png), collect_results' tables over every draw (tables.txt/.tex) and at default hparams
# (tables_defaults.txt/.tex), each run's plateau verdict (plateau.txt) and each algorithm minus ERM
# (compare.txt) and the page's tables of both (summary.md), e.g.
#   bash benchmarks/plateau_report.sh colored_fmnist_plateau results
set -euo pipefail
name=$1 results=${2:-}
d=${PLATEAU_RECORDS:-docs/measured}/$name  # PLATEAU_RECORDS: another records folder (tests)
if [ -n "$results" ]; then
  bash benchmarks/harvest_runs.sh "$results/$name" "$d"
  [ -d "$results/${name}_probe" ] && bash benchmarks/harvest_runs.sh "$results/${name}_probe" "${d}_probe"
fi
warnings=$(mktemp)  # each tool warns once per table (say, of runs from two commits): print each line once
trap 'sort -u "$warnings" >&3; rm -f "$warnings"' EXIT
exec 3>&2 2>>"$warnings"
probe=()
[ -d "${d}_probe" ] && probe=(--input_dir "probe=${d}_probe")
selections=(training_domain oracle)
metrics=(acc)
if grep -rqs '"env[0-9]*_in_wg_acc"' --include results.jsonl "$d"; then
  selections+=(worst_group)
  metrics+=(wg_acc)
fi
python -m harness.collect_results --input_dir "$d" --selection "${selections[@]}" --no_plots --output "$d/tables.txt"
python -m harness.collect_results --input_dir "$d" --selection "${selections[@]}" --no_plots --latex --output "$d/tables.tex"
python -m harness.collect_results --input_dir "$d" --selection "${selections[@]}" --no_plots --draws 0 \
  --output "$d/tables_defaults.txt"
python -m harness.collect_results --input_dir "$d" --selection "${selections[@]}" --no_plots --draws 0 --latex \
  --output "$d/tables_defaults.tex"
python benchmarks/plateau_curves.py --input_dir "$d" --output "$d/curve.png" --draws 0 > "$d/plateau.txt"
echo >> "$d/plateau.txt"
python benchmarks/plateau_curves.py --input_dir "$d" >> "$d/plateau.txt"
compare() {  # each algorithm minus ERM at default hparams, then over every draw; "$@": extra flags
  echo "## draws: 0 (default hparams)"
  python benchmarks/compare_algorithms.py --input_dir "$d" "${probe[@]}" --selection training_domain oracle \
    --metric "${metrics[@]}" "$@" --draws 0
  echo
  echo "## draws: every"
  python benchmarks/compare_algorithms.py --input_dir "$d" "${probe[@]}" --selection training_domain oracle \
    --metric "${metrics[@]}" "$@"
}
compare > "$d/compare.txt"
compare --summary > "$d/summary.md"
echo "wrote $d/{tables,tables_defaults}.{txt,tex}, curve.png, plateau.txt, compare.txt, summary.md"
