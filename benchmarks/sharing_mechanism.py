"""The minimality mechanism at the inner-problem level, without training (docs/study/overcomplete.md).

    python benchmarks/sharing_mechanism.py [--draws 20] [--out docs/study/overcomplete]

Fixed features in which factor z0 appears in ``--copies`` columns (z0 plus small independent noise,
``--noise``), every other factor in one column; T binary tasks that all depend on z0 and on one other
factor each, ``y_t = 1[a_t z0 + b_t z_j(t) > 0]``. The inner problem of SparseShared (arXiv 2304.07939)
fits the T heads jointly: l1 alone is indifferent between putting a task's weight on one copy of z0 or
another, the sharing term is not (the paper's minimality argument: features reused across the tasks
that need the same factor). Per setting and draw:

- ``agreement``: the fraction of tasks whose largest copy weight is on the batch's most chosen copy
  (1: every task uses the same copy; about 1/copies when each picks its own);
- ``concentration``: per task, the largest copy's share of the task's weight on the copies (1: one copy);
- ``copies_used``: copy columns with any weight in the batch.

Settings: sparsity alone (beta 0), the default reweighted term and the paper's entropy form at a few
betas. Prints a table (mean and standard deviation over draws) and writes ``mechanism.json`` and the
figure ``mechanism.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.algorithms.sparse_shared.implicit import sparse_heads  # noqa: E402

SETTINGS = [("none", 0.0), ("reweighted", 0.01), ("reweighted", 0.03), ("reweighted", 0.1), ("reweighted", 0.3),
            ("entropy", 0.03), ("entropy", 0.1), ("entropy", 0.3)]


def batch(draw: int, T: int, n: int, n_factors: int, copies: int, noise: float):
    """(Z (T, n, d), Y (T, n)): features [copies of z0, z1..z_{K-1}], standardised; tasks on z0 and one other."""
    g = torch.Generator().manual_seed(draw)
    z = torch.rand(T, n, n_factors, generator=g, dtype=torch.float64) * 2 - 1
    copy_cols = z[..., :1] + noise * torch.randn(T, n, copies, generator=g, dtype=torch.float64)
    Z = torch.cat([copy_cols, z[..., 1:]], dim=2)
    Z = (Z - Z.mean(1, keepdim=True)) / Z.std(1, keepdim=True)
    other = torch.randint(1, n_factors, (T,), generator=g)
    a = 0.5 + torch.rand(T, generator=g, dtype=torch.float64)
    b = 0.5 + torch.rand(T, generator=g, dtype=torch.float64)
    score = a.view(T, 1) * z[..., 0] + b.view(T, 1) * z[torch.arange(T), :, other]
    return Z, (score > 0).long()


def copy_statistics(W: torch.Tensor, copies: int) -> dict[str, float]:
    w = W[:, :copies, 0].abs()  # (T, copies)
    on = w.sum(1) > 0
    top = w.argmax(1)[on]
    agreement = float((top == top.mode().values).double().mean()) if len(top) else float("nan")
    concentration = float((w.max(1).values[on] / w.sum(1)[on]).mean()) if len(top) else float("nan")
    return {"agreement": agreement, "concentration": concentration, "copies_used": int((w.sum(0) > 0).sum()),
            "tasks_on_z0": float(on.double().mean())}


def run(args) -> dict:
    results = {}
    for sharing, beta in SETTINGS:
        rows = []
        for draw in range(args.draws):
            Z, Y = batch(draw, args.tasks, args.n, args.factors, args.copies, args.noise)
            W, _, info = sparse_heads(Z, Y, 2, alpha=args.alpha, beta=beta, sharing=sharing, tol=1e-10, max_iter=20000)
            rows.append({**copy_statistics(W, args.copies), "mm_rounds": info["mm_rounds"]})
        results[f"{sharing} {beta:g}"] = {k: [r[k] for r in rows] for k in rows[0]}
    return results


def summary(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over the draws that have a value (NaN: no task used z0)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0) if len(v) else (float("nan"), 0.0)


def plot(results: dict, copies: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, key, label in ((axes[0], "agreement", "tasks on the batch's most used copy of z0"),
                           (axes[1], "concentration", "a task's weight on its largest copy")):
        means = [summary(results[n][key])[0] for n in names]
        sds = [summary(results[n][key])[1] for n in names]
        colors = ["grey" if n.startswith("none") else "tab:blue" if n.startswith("reweighted") else "tab:orange"
                  for n in names]
        ax.bar(range(len(names)), means, yerr=sds, color=colors, capsize=3)
        ax.axhline(1.0 / copies if key == "agreement" else 1.0, color="k", lw=0.8, ls=":")
        ax.set_xticks(range(len(names)), ["beta 0" if n.startswith("none") else f"beta\n{n.split()[1]}"
                                          for n in names], fontsize=8)
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.1)
    from matplotlib.patches import Patch

    axes[1].legend(handles=[Patch(color=c, label=t) for c, t in (("grey", "sparsity alone"), ("tab:blue", "reweighted "
                   "(default)"), ("tab:orange", "entropy (paper's form)"))], loc="lower right", fontsize=8)
    axes[0].set_title(f"Do the tasks share one copy? (dotted: 1/{copies}, chance)", fontsize=10)
    axes[1].set_title("Does each task use one copy?", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--n", type=int, default=64, help="support points per task")
    p.add_argument("--factors", type=int, default=6)
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--out", default="docs/study/overcomplete")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = run(args)
    print(f"{args.tasks} tasks x {args.n} points, z0 in {args.copies} copies (noise {args.noise}), {args.factors} "
          f"factors, alpha {args.alpha}; mean (sd) over {args.draws} draws")
    print(f"{'setting':<18} {'agreement':>14} {'concentration':>16} {'copies used':>12} {'tasks on z0':>12}")
    for name, r in results.items():
        cells = [summary(r[k]) for k in ("agreement", "concentration", "copies_used", "tasks_on_z0")]
        print(f"{name:<18} " + " ".join(f"{m:>8.3f} ({s:.3f})" for m, s in cells))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mechanism.json").write_text(json.dumps({"settings": vars(args), "results": results}, indent=1) + "\n")
    plot(results, args.copies, out / "mechanism.png")
    print(f"wrote {out / 'mechanism.json'} and {out / 'mechanism.png'}")


if __name__ == "__main__":
    main()
