"""The sharing study's report: does sharing go with disentanglement (Fumero et al., arXiv 2304.07939)?

    python -m harness.report --input_dir docs/measured/sharing_study --out docs/study

reads the finished runs below ``--input_dir`` (the sweeps ``sweeps/sharing_*.json``) and writes
``sharing.md`` with its PNG plots into ``--out``: means with 95% t-intervals over seeds, the beta
sweep against MultiTask and ERM, the alpha x beta phase diagram, correlated factors, and the
correlation of each sharing statistic with DCI disentanglement, completeness and MCC (Pearson and
Spearman with p-values, a bootstrap interval, and the partial correlation controlling for alpha).
The statistics are those SparseShared logs at each checkpoint: ``probe_*`` from heads fitted with
the sparsity penalty alone on a fixed probe batch of tasks (the representation's sharing), and
``train_sharing = 1 - H(p)/log d`` of the training heads, fitted with the training beta (the step
average of the logged ``entropy`` over the last checkpoint interval).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from harness.errors import UserError, cli

PAPER_R = 0.947  # the paper's Pearson correlation between sharing and DCI disentanglement
TARGETS = {"dci_disentanglement": "DCI D", "dci_completeness": "DCI C", "mcc": "MCC"}
STATS = {"probe_sharing": "sharing (importance)", "probe_sharing_counts": "sharing (counts)",
         "probe_mean_reuse": "mean reuse", "probe_features_used": "features used",
         "train_sharing": "sharing of the training heads"}
COLUMNS = {**TARGETS, "task_acc": "new-task acc", "train_sharing": "train sharing", "probe_sharing": "sharing",
           "probe_features_used": "features", "probe_features_per_task": "features/task"}
HP = ["alpha", "beta", "sharing", "factor_correlation", "sharing_grad", "feature_dim", "factor_skew"]
OVERCOMPLETE = "overcomplete"  # the sub-folder of --input_dir with the overcomplete study's runs (sweeps/overcomplete*)
WIDE = {"dci_disentanglement": "DCI D", "dci_completeness": "DCI C", "dci_informativeness": "DCI I", "mcc": "MCC",
        "redundancy": "features/factor", "probe_features_used": "features used", "task_acc": "new-task acc"}


def final_runs(input_dir: Path):
    """One row per finished run (its last checkpoint) with the study's hparams as plain columns, and
    the per-checkpoint frame for the curves."""
    from harness.records import keep_runs, load_records, records_frame

    df = keep_runs(records_frame(load_records(input_dir)[0]))
    df["dataset"] = df["dataset"].str.replace(r" \(\d+ steps\)$", "", regex=True)  # lengths are kept apart below
    df["length"] = df.groupby("run")["step"].transform("max")
    if "entropy" in df and "hparams.feature_dim" in df:  # H(p) of the training heads, with the training beta
        df["train_sharing"] = 1 - df["entropy"] / df["hparams.feature_dim"].astype(float).map(math.log)
    for h in HP:
        df[h] = df.get(f"hparams.{h}")
    df["factor_correlation"] = df["factor_correlation"].fillna(0.0)
    df["sharing_grad"] = df["sharing_grad"].fillna("last_solve")  # records from before the hparam existed
    df["sharing"] = df["sharing"].fillna("reweighted")  # records from when the hparam was absent
    df["factor_skew"] = df["factor_skew"].fillna(0.0)
    final = df.sort_values("step").groupby("run").tail(1)
    return final, df


def interval(values) -> tuple[float, float, int]:
    """(mean, half-width of the 95% t-interval, n); the half-width is nan for n < 2."""
    from scipy import stats

    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(v) / n
    if n < 2:
        return mean, math.nan, n
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    return mean, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n), n


def fmt(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"


def summary_table(groups: list[tuple[str, object]]) -> str:
    """Markdown table, one row per (label, frame of final runs), a column per metric in COLUMNS."""
    from tabulate import tabulate

    rows = []
    for label, g in groups:
        cells = [fmt(*interval(g[c])[:2]) if c in g else "–" for c in COLUMNS]
        rows.append([label, len(g), *cells])
    return tabulate(rows, headers=["run", "n", *COLUMNS.values()], tablefmt="github", disable_numparse=True)


def correlations(final, seed: int = 0, n_boot: int = 2000, targets=tuple(TARGETS)) -> str:
    """Pearson (p, bootstrap 95% interval), Spearman (p) and partial-on-alpha Pearson of each sharing
    statistic against each of ``targets``, over the given runs."""
    import numpy as np
    from scipy import stats
    from tabulate import tabulate

    rng = np.random.default_rng(seed)
    rows = []
    for s, s_name in STATS.items():
        for t in targets:
            t_name = TARGETS[t]
            if s not in final or t not in final:
                continue
            sub = final[[s, t, "alpha"]].dropna()
            if len(sub) < 4 or sub[s].nunique() < 2 or sub[t].nunique() < 2:
                continue
            x, y, a = (sub[c].to_numpy(float) for c in (s, t, "alpha"))
            pr = stats.pearsonr(x, y)
            sr = stats.spearmanr(x, y)
            i = rng.integers(0, len(x), (n_boot, len(x)))
            xb, yb = x[i] - x[i].mean(1, keepdims=True), y[i] - y[i].mean(1, keepdims=True)
            den = np.sqrt((xb * xb).sum(1) * (yb * yb).sum(1))
            boot = (xb * yb).sum(1)[den > 0] / den[den > 0]
            lo, hi = np.percentile(boot, [2.5, 97.5])
            partial = "–"
            if np.ptp(a) > 0:
                rx = x - np.polyval(np.polyfit(a, x, 1), a)
                ry = y - np.polyval(np.polyfit(a, y, 1), a)
                partial = f"{stats.pearsonr(rx, ry).statistic:+.2f}"
            rows.append([s_name, t_name, len(x), f"{pr.statistic:+.2f} (p={pr.pvalue:.2g})", f"[{lo:+.2f}, {hi:+.2f}]",
                         f"{sr.statistic:+.2f} (p={sr.pvalue:.2g})", partial])
    return tabulate(rows, headers=["statistic", "target", "runs", "Pearson r", "bootstrap 95%", "Spearman rho",
                                   "partial r (alpha)"], tablefmt="github")


def plot_curves(df, runs, out: Path, name: str, key: str = "beta") -> Path:
    """DCI disentanglement against step, mean over seeds, one line per value of ``key``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    sub = df[df["run"].isin(runs)].dropna(subset=["dci_disentanglement"])
    for value, g in sub.groupby(key, dropna=False):
        curve = g.groupby("step")["dci_disentanglement"].mean()
        ax.plot(curve.index, curve.values, marker="o", label=value if key == "label" else f"{key} {value}")
    ax.set_xlabel("step")
    ax.set_ylabel("DCI disentanglement")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_phase(final, out: Path, name: str) -> Path | None:
    """Heatmaps over alpha x beta of the seed-mean D, MCC and new-task accuracy."""
    import matplotlib.pyplot as plt
    import numpy as np

    if final["alpha"].nunique() < 2 or final["beta"].nunique() < 2:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, col in zip(axes, ["dci_disentanglement", "mcc", "task_acc"]):
        grid = final.pivot_table(index="alpha", columns="beta", values=col, aggfunc="mean")
        im = ax.imshow(grid.values, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [f"{b:g}" for b in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [f"{a:g}" for a in grid.index])
        for (i, j), v in np.ndenumerate(grid.values):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xlabel("beta")
        ax.set_ylabel("alpha")
        ax.set_title(COLUMNS.get(col, col))
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scatter(final, out: Path, name: str) -> Path:
    """Sharing (importance) against DCI disentanglement, one point per run, coloured by beta."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    sc = ax.scatter(final["probe_sharing"], final["dci_disentanglement"], c=final["beta"], cmap="plasma")
    fig.colorbar(sc, ax=ax, label="beta")
    ax.set_xlabel("sharing 1 - H(p)/log d (probe)")
    ax.set_ylabel("DCI disentanglement")
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(input_dir: Path, out: Path) -> str:
    """Write the plots into ``out`` and return the Markdown."""
    import matplotlib

    matplotlib.use("Agg")
    final, df = final_runs(input_dir)
    if not (final["algorithm"] == "SparseShared").any():
        raise UserError(f"no finished SparseShared runs below {input_dir} (found "
                        f"{', '.join(sorted(final['algorithm'].unique()))}); the report studies SparseShared's "
                        "sharing statistics")
    df = df.merge(final[["run", *HP]].rename(columns={h: f"_{h}" for h in HP}), on="run")
    for h in HP:
        df[h] = df[f"_{h}"]
    study = final["run"].str.startswith(f"{OVERCOMPLETE}/")  # the overcomplete study has its own section
    final, overcomplete = final[~study], final[study]
    syn = final[final["dataset"] == "SyntheticLinear"]
    budget = syn["length"].mode().iloc[0]  # the study's common budget; longer runs show the plateau
    long = syn[(syn["length"] > budget) & (syn["algorithm"] == "SparseShared")]
    syn = syn[syn["length"] == budget]
    ss = syn[syn["algorithm"] == "SparseShared"]
    full = ss[ss["sharing_grad"] == "full"]
    ss = ss[ss["sharing_grad"] == "last_solve"]
    rew = ss[(ss["sharing"] == "reweighted") & (ss["factor_correlation"] == 0)]
    alpha0 = rew["alpha"].mode().iloc[0] if len(rew) else math.nan
    main = rew[rew["alpha"] == alpha0]
    lines = ["# Sharing and disentanglement: the study\n",
             f"Generated by `python -m harness.report --input_dir {input_dir} --out {out}` from "
             f"{len(final)} finished runs. Intervals are 95% t-intervals over seeds (`n` runs per row; "
             "no interval where n = 1). DCI and MCC are measured on held-out points; `new-task acc` is "
             "the accuracy of heads fitted on new factor tasks with the backbone frozen; `train sharing` is "
             "1 - H(p)/log d of the training heads' feature importances (fitted with the training beta), "
             "`sharing` the same for probe heads fitted with the sparsity penalty alone (the "
             "representation's sharing), `features` the features any probe task uses and `features/task` "
             "the mean per probe task (SyntheticLinear has 10 factors, d = 10 and tasks on 1-3 factors).\n"]
    wall = input_dir / "wall_time.txt"
    if wall.exists():
        lines.append(f"Wall time: {wall.read_text().strip()}\n")

    lines.append(f"## (a) The sharing weight beta at alpha = {alpha0:g} (SyntheticLinear, {budget} steps)\n")
    groups = [(f"SparseShared beta {b:g}", g) for b, g in main.groupby("beta")]
    ent = ss[(ss["sharing"] == "entropy") & (ss["factor_correlation"] == 0)]
    groups += [(f"SparseShared, entropy form, beta {b:g}", g) for b, g in ent.groupby("beta")]
    groups += [(f"SparseShared beta {b:g}, full gradient", g) for b, g in full.groupby("beta")]
    groups += [(name, syn[syn["algorithm"] == name]) for name in ("MultiTask", "ERM") if (syn["algorithm"] == name).any()]
    lines += [summary_table(groups), ""]
    if len(main):
        p = plot_curves(df, set(main["run"]), out, "sharing_dci_vs_step.png")
        lines.append(f"DCI disentanglement along training (mean over seeds): ![curves]({p.name})\n")

    if len(long):
        lines.append(f"### The plateau: {len(long)} runs trained longer\n")
        curve = df[df["run"].isin(long["run"])].dropna(subset=["dci_disentanglement"])
        table = curve.pivot_table(index="step", columns="beta", values="dci_disentanglement", aggfunc="mean")
        lines += ["DCI disentanglement by step (columns: beta; one seed each; at the same seed the first "
                  f"{budget} steps equal the study's run):\n", table.round(3).to_markdown(), ""]
        p = plot_curves(df, set(long["run"]), out, "sharing_plateau.png")
        lines.append(f"![plateau]({p.name})\n")

    grid = rew.groupby(["alpha", "beta"])
    if rew["alpha"].nunique() > 1:
        lines.append("## (b) Phase diagram: alpha x beta (seed means)\n")
        lines += [summary_table([(f"alpha {a:g}, beta {b:g}", g) for (a, b), g in grid]), ""]
        p = plot_phase(rew, out, "sharing_phase.png")
        if p:
            lines.append(f"![phase diagram]({p.name})\n")

    corr = ss[(ss["sharing"] == "reweighted") & (ss["factor_correlation"] > 0)]
    if len(corr):
        lines.append("## (c) Correlated factors (Gaussian copula, equicorrelation rho)\n")
        base = main.assign(factor_correlation=0.0)
        both = [g for g in (base, corr) if len(g)]
        import pandas as pd

        allc = pd.concat(both)
        allc = allc[allc["beta"].isin(corr["beta"].unique()) & (allc["alpha"] == alpha0)]
        lines += [summary_table([(f"rho {r:g}, beta {b:g}", g)
                                 for (r, b), g in allc.groupby(["factor_correlation", "beta"])]), ""]

    lines += image_datasets(final, df, out)
    lines += transfer_section(input_dir / "transfer.jsonl")

    lines.append("## Sharing against disentanglement\n")
    lines.append(f"Over all {len(rew)} SparseShared runs with the reweighted term on independent factors "
                 "(every alpha and beta, every seed):\n")
    lines += [correlations(rew), ""]
    if len(main) >= 4 and rew["alpha"].nunique() > 1:
        lines.append(f"At alpha = {alpha0:g} only ({len(main)} runs):\n")
        lines += [correlations(main), ""]
    p = plot_scatter(rew, out, "sharing_vs_dci.png")
    lines.append(f"![sharing vs DCI]({p.name})\n")
    lines.append(verdict(rew))
    lines += overcomplete_section(overcomplete, df, out, input_dir)
    return "\n".join(lines)


def paired_difference(runs, base, col: str) -> str:
    """Mean difference ``runs - base`` of ``col`` over the trial seeds both have (same data and init), with
    its 95% t-interval."""
    a = runs.set_index("trial_seed")[col]
    b = base.set_index("trial_seed")[col]
    common = a.index.intersection(b.index)
    if col not in runs or not len(common):
        return "–"
    mean, half, _ = interval(list(a[common] - b[common]))
    return "–" if math.isnan(mean) else (f"{mean:+.3f}" if math.isnan(half) else f"{mean:+.3f} ± {half:.3f}")


def width_table(groups: list[tuple[str, object]], base) -> str:
    """Markdown: per (label, runs) the mean ± 95% interval of each WIDE column, and D's and C's paired
    difference to ``base`` (the same width at beta 0)."""
    from tabulate import tabulate

    rows = []
    for label, g in groups:
        cells = [fmt(*interval(g[c])[:2]) if c in g else "–" for c in WIDE]
        is_base = base is not None and set(g["run"]) == set(base["run"])
        diffs = [paired_difference(g, base, c) if base is not None and not is_base else "–"
                 for c in ("dci_disentanglement", "dci_completeness")]
        rows.append([label, len(g), *cells, *diffs])
    return tabulate(rows, headers=["run", "n", *WIDE.values(), "D - D(beta 0)", "C - C(beta 0)"], tablefmt="github",
                    disable_numparse=True)


def overcomplete_section(runs, df, out: Path, runs_dir: Path) -> list[str]:
    """'Where the sharing term helps, if anywhere': the runs under ``OVERCOMPLETE/`` (sweeps/overcomplete*)."""
    import json

    if runs.empty:
        return []
    lines = ["## Where the sharing term helps, if anywhere\n",
             "The paper's minimality argument is about representations with more features than factors, where a "
             "factor can be spread over several features; DCI completeness (C) and `features/factor` (per factor, "
             "the features whose |correlation| with it exceeds 0.5) measure that spread. SyntheticLinear, 10 "
             "factors, `feature_dim` 10, 20 and 40, SparseShared with the default (reweighted) sharing term; "
             f"{len(runs)} finished runs. Differences to beta 0 are paired by trial seed (same data and "
             "initialisation), with 95% t-intervals.\n"]
    wall = runs_dir / OVERCOMPLETE / "wall_time.txt"
    if wall.exists():
        lines.append(f"Wall time of these runs on 2 cores: {wall.read_text().strip()}\n")
    mech = out / "overcomplete" / "mechanism.json"
    if mech.exists():
        lines += mechanism_lines(json.loads(mech.read_text()))
    ss = runs[(runs["algorithm"] == "SparseShared") & (runs["factor_skew"] == 0)]
    refs = runs[(runs["algorithm"] != "SparseShared") & (runs["factor_skew"] == 0)]
    rew = ss[ss["sharing"] == "reweighted"]
    for width in sorted(runs["feature_dim"].dropna().unique()):
        w_rew, w_ent = rew[rew["feature_dim"] == width], ss[(ss["sharing"] == "entropy") & (ss["feature_dim"] == width)]
        base = w_rew[w_rew["beta"] == 0]
        groups = [(f"SparseShared beta {b:g}", g) for b, g in w_rew.groupby("beta")]
        groups += [(f"entropy form, beta {b:g}", g) for b, g in w_ent.groupby("beta")]
        groups += [(a, g) for a, g in refs[refs["feature_dim"] == width].groupby("algorithm")]
        lines += [f"### feature_dim {int(width)}\n", width_table(groups, base if len(base) else None), ""]
    reused = runs[runs["factor_skew"] > 0]
    if len(reused):
        skew = reused["factor_skew"].iloc[0]
        r_ss = reused[reused["algorithm"] == "SparseShared"]
        base = r_ss[r_ss["beta"] == 0]
        groups = [(f"SparseShared beta {b:g}", g) for b, g in r_ss.groupby("beta")]
        groups += [(a, g) for a, g in reused[reused["algorithm"] != "SparseShared"].groupby("algorithm")]
        lines += [f"### Reused factors (tasks on 1-2 factors, factor_skew {skew:g}, feature_dim "
                  f"{int(reused['feature_dim'].iloc[0])})\n", width_table(groups, base if len(base) else None), ""]
    curves = df[df["run"].isin(rew["run"])].dropna(subset=["dci_disentanglement"])
    if len(curves):
        curves = curves.assign(label=[f"d={int(w)} beta {b:g}" for w, b in zip(curves["feature_dim"], curves["beta"])])
        table = curves.pivot_table(index="step", columns="label", values="dci_disentanglement", aggfunc="mean")
        lines += ["DCI disentanglement by step (mean over seeds): the plateau.\n", table.round(3).to_markdown(), ""]
        p = plot_curves(curves, set(rew["run"]), out, "overcomplete_plateau.png", key="label")
        lines.append(f"![plateau]({p.name})\n")
    for label, g in [("pooled over widths", rew)] + [(f"at feature_dim {int(w)}", g) for w, g in rew.groupby("feature_dim")]:
        table = correlations(g, targets=("dci_disentanglement", "dci_completeness"))
        rows = table.count("\n") - 1
        lines += [f"Sharing statistics against D and C (SparseShared, reweighted term), {label}, {len(g)} runs:\n",
                  table if rows > 0 else "(too few runs with varying values for a correlation)", ""]
    lines += overcomplete_verdict(rew)
    return lines


def mechanism_lines(mech: dict) -> list[str]:
    """The mechanism without training (benchmarks/sharing_mechanism.py's mechanism.json) as a table."""
    from tabulate import tabulate

    s = mech["settings"]
    rows = []
    for name, r in mech["results"].items():
        cells = []
        for k in ("agreement", "concentration", "copies_used"):
            v = [x for x in r[k] if x == x]
            mean, half, _ = interval(v)
            cells.append(fmt(mean, half))
        rows.append([name.replace("none 0", "sparsity alone"), *cells])
    return ["### The mechanism, without training\n",
            f"`python benchmarks/sharing_mechanism.py` (inner problem only): factor z0 in {s['copies']} feature "
            f"columns (z0 plus noise {s['noise']}), {s['tasks']} binary tasks each on z0 and one other factor, "
            f"alpha {s['alpha']}, {s['draws']} draws (95% intervals). `agreement`: tasks whose largest z0 weight "
            "is on the batch's most used copy (1/3 by chance); `concentration`: a task's weight on its largest copy.\n",
            tabulate(rows, headers=["setting", "agreement", "concentration", "copies used"], tablefmt="github",
                     disable_numparse=True), "", "![mechanism](overcomplete/mechanism.png)\n"]


def overcomplete_verdict(rew) -> list[str]:
    """Per width, in words chosen by the numbers: does any beta raise D or C over beta 0 (paired interval)?"""
    out = []
    for width, g in rew.groupby("feature_dim"):
        base = g[g["beta"] == 0]
        if base.empty:
            continue
        parts = []
        for b, gb in g[g["beta"] > 0].groupby("beta"):
            for col, name in (("dci_disentanglement", "D"), ("dci_completeness", "C")):
                a, c = gb.set_index("trial_seed")[col], base.set_index("trial_seed")[col]
                common = a.index.intersection(c.index)
                mean, half, n = interval(list(a[common] - c[common]))
                if n < 2 or math.isnan(half):
                    continue
                word = "raises" if mean - half > 0 else "lowers" if mean + half < 0 else "does not detectably change"
                parts.append(f"beta {b:g} {word} {name} ({mean:+.3f} ± {half:.3f})")
        if parts:
            out.append(f"- feature_dim {int(width)}: " + "; ".join(parts) + ".")
    if not out:
        return []
    return ["**Verdict (paired by seed, 95% intervals).** The paper reports Pearson r = "
            f"{PAPER_R} between sharing and DCI disentanglement; here:\n", *out, ""]


def run_label(row) -> str:
    return f"SparseShared beta {row['beta']:g}" if row["algorithm"] == "SparseShared" else row["algorithm"]


def image_datasets(final, df, out: Path) -> list[str]:
    """(d): each image dataset's runs (SparseShared by beta, the references), with DCI along training."""
    lines = []
    others = final[final["dataset"] != "SyntheticLinear"]
    for ds, g in others.groupby("dataset"):
        g = g.assign(label=g.apply(run_label, axis=1), _ref=g["algorithm"] != "SparseShared")
        g = g.sort_values(["_ref", "algorithm", "beta"])
        lines.append(f"## (d) {ds} ({int(g['length'].max())} steps)\n")
        lines += [summary_table([(label, gl) for label, gl in g.groupby("label", sort=False)]), ""]
        curves = df[df["run"].isin(g["run"])].merge(g[["run", "label"]], on="run")
        table = curves.pivot_table(index="step", columns="label", values="dci_disentanglement", aggfunc="mean")
        if len(table):
            lines += ["DCI disentanglement by step:\n", table.round(3).to_markdown(), ""]
            p = plot_curves(curves, set(g["run"]), out, f"sharing_{ds.lower()}_curve.png", key="label")
            lines.append(f"![{ds} curves]({p.name})\n")
    return lines


def transfer_section(path: Path) -> list[str]:
    """(e): new-task accuracy of frozen backbones on the other dataset's factor tasks
    (``python -m harness.transfer ... --out transfer.jsonl``), next to the accuracy on their own; runs
    of the same algorithm and beta (seeds) are one row."""
    import pandas as pd
    from tabulate import tabulate

    if not path.exists():
        return []
    rows = pd.read_json(path, lines=True)
    rows["beta"] = rows["hparams"].map(lambda h: h.get("beta"))
    rows["label"] = rows.apply(run_label, axis=1)
    table = []
    for (source, target, label), g in rows.groupby(["source", "target", "label"], sort=True):
        target_acc = (fmt(*interval(g["task_acc"])[:2]) if len(g) > 1
                      else f"{g['task_acc'].iloc[0]:.3f} ± {g['task_ci95'].iloc[0]:.3f}")
        table.append([source, target, label, len(g), fmt(*interval(g["source_task_acc"])[:2]), target_acc])
    return ["## (e) Cross-dataset transfer\n",
            "New-task accuracy with the backbone frozen: heads fitted on the support set of binary factor tasks "
            "of the target dataset, next to the accuracy on the source's own tasks. With one run (n = 1) the "
            "interval is over the target's tasks; with several, the mean and 95% t-interval over the runs.\n",
            tabulate(table, headers=["source", "target", "run", "n", "source new-task acc", "target new-task acc"],
                     tablefmt="github", disable_numparse=True), ""]


def verdict(runs) -> str:
    """The headline comparison with the paper, in words chosen by the numbers, for the sharing of the
    probe heads (the representation) and of the training heads."""
    import numpy as np
    from scipy import stats

    out = []
    for col, what in (("probe_sharing", "the representation's sharing (probe heads, beta = 0)"),
                      ("train_sharing", "the training heads' sharing (with the training beta)")):
        if col not in runs:
            continue
        sub = runs[[col, "dci_disentanglement"]].dropna()
        if len(sub) < 4:
            continue
        r = stats.pearsonr(sub[col], sub["dci_disentanglement"])
        z, se = np.arctanh(np.clip(r.statistic, -0.999999, 0.999999)), 1 / math.sqrt(len(sub) - 3)
        lo, hi = np.tanh(z - 1.96 * se), np.tanh(z + 1.96 * se)
        if lo <= 0 <= hi:
            sign = "no detectable correlation"
        else:
            sign = ("a positive" if r.statistic > 0 else "a negative") + " correlation"
        relation = "its 95% interval includes 0.947" if lo <= PAPER_R <= hi else "its 95% interval excludes 0.947"
        out.append(f"- **{what}**: r = {r.statistic:+.3f} (Fisher 95% interval [{lo:+.2f}, {hi:+.2f}], "
                   f"p = {r.pvalue:.2g}, {len(sub)} runs): {sign}; {relation}.")
    if not out:
        return "Too few runs for a correlation.\n"
    return (f"**The paper reports Pearson r = {PAPER_R} between sharing and DCI disentanglement. Here, over the "
            "runs above:**\n\n" + "\n".join(out) + "\n")


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--input_dir", required=True, type=Path, help="folder holding the study's finished runs")
    parser.add_argument("--out", required=True, type=Path, help="folder for sharing.md and its plots")
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {args.out}: {e.strerror}") from None
    text = build_report(args.input_dir, args.out)
    (args.out / "sharing.md").write_text(text)
    print(f"wrote {args.out / 'sharing.md'}")


if __name__ == "__main__":
    main()
