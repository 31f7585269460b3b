"""The plateau curve of docs/rotated_fmnist.md: training-domain validation accuracy against step.

    python benchmarks/plot_rotated_fmnist_curve.py --input_dir results/rotated_fmnist --output docs/measured/rotated_fmnist/curve.png

For every run below --input_dir (its results.jsonl), the mean over training domains of the 'out'
(validation) accuracy at each checkpoint; one line per (algorithm, held-out environment), averaged
over trials of the default hparams (hparams_seed 0), with the held-out 'in' accuracy dashed. Also
prints the curve as a table (the numbers behind the PNG).
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from harness.checkpoints import RESULTS, scan_records


def curves(input_dir: Path) -> dict[tuple[str, int], dict[int, list[tuple[float, float]]]]:
    out: dict[tuple[str, int], dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(input_dir.rglob(RESULTS)):
        for r in scan_records(path).records:
            if r["args"]["hparams_seed"] != 0:
                continue
            test = r["args"]["test_envs"]
            n_envs = sum(1 for k in r if k.endswith("_out_acc") and k.startswith("env"))
            val = [r[f"env{i}_out_acc"] for i in range(n_envs) if i not in test]
            held = sum(r[f"env{i}_in_acc"] for i in test) / len(test)
            out[(r["args"]["algorithm"], test[0])][r["step"]].append((sum(val) / len(val), held))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input_dir", type=Path, default=Path("results/rotated_fmnist"))
    p.add_argument("--output", type=Path, default=Path("docs/measured/rotated_fmnist/curve.png"))
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(a.input_dir)
    test_envs = sorted({t for _, t in data})
    fig, axes = plt.subplots(1, len(test_envs), figsize=(5.5 * len(test_envs), 4), squeeze=False)
    print("| algorithm | held-out env | step | training-domain val acc | held-out acc | trials |")
    print("|---|---|---|---|---|---|")
    for ax, t in zip(axes[0], test_envs):
        for (alg, te), by_step in sorted(data.items()):
            if te != t:
                continue
            steps = sorted(by_step)
            val = [sum(v for v, _ in by_step[s]) / len(by_step[s]) for s in steps]
            held = [sum(h for _, h in by_step[s]) / len(by_step[s]) for s in steps]
            line, = ax.plot(steps, val, marker="o", label=alg)
            ax.plot(steps, held, ls="--", color=line.get_color(), alpha=0.6)
            for s, v, h in zip(steps, val, held):
                print(f"| {alg} | {te} | {s} | {v:.3f} | {h:.3f} | {len(by_step[s])} |")
        ax.set_title(f"held-out env {t}: solid = training-domain val, dashed = held-out")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(a.output, dpi=110)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
