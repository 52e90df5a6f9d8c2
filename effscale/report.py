"""Plots and a written report from a sweep's results table, `results/<sweep>/trials.csv`.

The last step of the chain (config → candidates → budget → trial → results row → report): it reads
the table and nothing else, with pandas, SciPy and matplotlib's Agg backend only, so it runs on a laptop
without torch, on a copy of someone else's results.

What it draws depends on what the table holds: a search (compound rows over an α/β grid at φ = 1)
gives the grid heatmap; a comparison (several strategies, or compound at several φ) gives the
accuracy-vs-MACs curves of the paper's figures 3 and 8 and the margin table. A table with only one
of the two gets only its own plots.

Accuracies in the table are fractions (0.853); the report shows percent.
"""

from __future__ import annotations

import base64
import errno
import html
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from effscale.errors import UserError
from effscale.files import first_new_folder, remove_created, write_atomically
from effscale.results import (MODEL_COLUMNS, SINGLE_DIMENSIONS, STATES, best_first, best_point, from_compare,
                              megabytes, mixed_training, read_table, search_trials, table_path, trained)

COEFFICIENTS = ["alpha", "beta", "gamma"]
METRICS = ("val_acc", "test_acc")  # what `--metric` may rank by

# Paper table 7 (ImageNet, EfficientNet-B0 scaled to ≈1.8 billion FLOPs by one method each, top-1 %).
# The paper's FLOPs are multiply-adds.
PAPER_TABLE7 = pd.DataFrame([
    ("baseline", "B0", 0.4, 77.3),
    ("depth", "d = 4", 1.8, 79.0),
    ("width", "w = 2", 1.8, 78.9),
    ("resolution", "r = 2", 1.9, 79.1),
    ("compound", "d = 1.4, w = 1.2, r = 1.3", 1.8, 81.1),
], columns=["strategy", "paper_scale", "paper_gflops", "paper_top1"])
PAPER_NOTE = ("Our data sets are far smaller than ImageNet and our models are trained for a few epochs "
              "at low resolution: expect the same *shape* as the paper (compound at or above every single "
              "dimension at equal FLOPs), not the same numbers.")

def t_critical(df: float) -> float:
    """t_{0.975, df}: the two-sided 95 % critical value of Student's t; `df` may be fractional (Welch)."""
    from scipy.special import stdtrit  # the inverse of Student's t distribution function

    return float(stdtrit(df, 0.975)) if df > 0 else math.nan


def mean_ci(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, half-width of its 95 % t-interval (NaN for one value) and n, over the non-missing values."""
    x = pd.Series(list(values), dtype=float).dropna()
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    half = t_critical(n - 1) * x.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return float(x.mean()), float(half), n


# --- reading and splitting the table ---------------------------------------------------------------


NUMERIC_COLUMNS = {"phi", "seed", "alpha", "beta", "gamma", "val_acc", "test_acc", "macs", "macs_ratio", "params",
                   "train_seconds", "peak_mem_mb", "depth_mult", "width_mult", "resolution"}
ACCURACY_COLUMNS = {"val_acc", "test_acc"}  # fractions, as effscale writes them


def load_trials(folder: str | Path) -> pd.DataFrame:
    """The results table of a sweep folder (or a CSV path), or a one-line UserError."""
    path = table_path(folder)
    if not path.is_file():
        raise UserError(f"{path}: no results table here (run `effscale search` or `effscale compare` first)")
    df = read_table(path)
    if df.empty:
        raise UserError(f"{path}: the results table has no rows")
    missing = [c for c in ("strategy", "phi", "state", "val_acc") if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; is this an effscale trials.csv?")
    for column in ("strategy", "phi", *COEFFICIENTS):
        blank = df[column].isna() if column in df.columns else pd.Series(False, index=df.index)
        if blank.any():
            raise UserError(f"{path}: column {column}, row {int(blank.to_numpy().nonzero()[0][0]) + 1}: blank; "
                            "every row of an effscale table has one")
    for column in sorted(NUMERIC_COLUMNS & set(df.columns)):
        numbers = pd.to_numeric(df[column], errors="coerce")
        bad, what = df[column].notna() & numbers.isna(), "a number"
        if column in ACCURACY_COLUMNS and not bad.any():
            bad, what = numbers.notna() & ~numbers.between(0, 1), "an accuracy between 0 and 1"
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            value = df[column].iloc[row]
            shown = repr(value) if isinstance(value, str) else f"{value:g}"
            raise UserError(f"{path}: column {column}, row {row + 1}: {shown} is not {what}")
    unknown = ~df["state"].isin(STATES)
    if unknown.any():
        row = int(unknown.to_numpy().nonzero()[0][0])
        raise UserError(f"{path}: column state, row {row + 1}: {df['state'].iloc[row]!r} is not one of "
                        f"{', '.join(STATES)}")
    return df


def completed(df: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    return df[(df["state"] == "COMPLETE") & df[metric].notna()]


def search_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the grid search: the compound rows `effscale search` wrote, at its φ (1, as in the
    paper, unless search.phi said otherwise), one group per (α, β, γ). Empty unless the table holds at
    least two grid points (a comparison alone has just its one coefficient set)."""
    if not set(COEFFICIENTS) <= set(df.columns):
        return df.iloc[0:0]
    rows = search_trials(df)
    if len(rows[COEFFICIENTS].drop_duplicates()) < 2:
        return rows.iloc[0:0]
    return rows


def comparison_rows(df: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """Completed rows of a strategy comparison, with φ = 0 rows labelled 'baseline' (every strategy at
    φ = 0 is the unscaled model). The rows `effscale compare` wrote, when there are any; otherwise
    compound keeps only the coefficients it was scaled with: those it has at φ ≠ 1, or else the best
    search point. Empty when the table compares nothing (one strategy at one φ)."""
    done = completed(df, metric).copy()
    if from_compare(done).any():
        done = latest_comparison(done[from_compare(done)])
    if done.empty:
        return done
    done.loc[done["phi"] == 0, "strategy"] = "baseline"
    compound = done["strategy"] == "compound"
    if set(COEFFICIENTS) <= set(done.columns) and compound.any():
        chosen = _compare_coefficients(done[compound], metric)
        keep = (done[COEFFICIENTS].round(6) == pd.Series(chosen).round(6)).all(axis=1)
        done = done[~compound | keep]
    if done["strategy"].nunique() < 2 and done["phi"].nunique() < 2:
        return done.iloc[0:0]
    return done


def latest_comparison(rows: pd.DataFrame) -> pd.DataFrame:
    """Of the rows `effscale compare` wrote, those of the latest comparison (its coefficients) that has
    something to compare, two strategies or two φ, and at each (strategy, φ) those of the model it
    trained last. One sweep folder can hold several comparisons (other α, β, γ), or the same one
    planned again (another scale.resolution_multiple matches another model): pooled, the same seed of the
    same model would count twice, and a strategy's mean would mix models matched to different compound
    models. A newer comparison that has completed only its baseline so far hides nothing."""
    if rows.empty or not set(COEFFICIENTS) <= set(rows.columns):
        return rows
    order = rows["trial"].astype(float) if "trial" in rows and rows["trial"].notna().all() \
        else pd.Series(range(len(rows)), index=rows.index, dtype=float)
    comparison = rows[COEFFICIENTS].astype(float).round(6).astype(str).agg(" ".join, axis=1)
    newest_first = order.groupby(comparison).max().sort_values(ascending=False).index

    def compares(key: str) -> bool:
        its = rows[comparison == key]
        return its["strategy"].nunique() > 1 or its["phi"].nunique() > 1

    rows = rows[comparison == next((key for key in newest_first if compares(key)), newest_first[0])]
    models = [c for c in MODEL_COLUMNS if c in rows]
    if not models:
        return rows
    model = rows[models].astype(float).round(6).astype(str).agg(" ".join, axis=1)
    last = model.groupby([rows["strategy"], rows["phi"]]).transform(lambda m: m[order[m.index].idxmax()])
    return rows[model == last]


def other_comparisons(df: pd.DataFrame, metric: str = "val_acc") -> str:
    """A sentence on the completed rows of `effscale compare` that `latest_comparison` leaves out, or ''."""
    rows = completed(df, metric)
    rows = rows[from_compare(rows)]
    kept = latest_comparison(rows)
    left = rows.drop(kept.index)
    if left.empty:
        return ""
    shown = kept.iloc[0]
    others = left[COEFFICIENTS].drop_duplicates()
    sets = "; ".join(f"α={a:g} β={b:g} γ={g:g}" for a, b, g in others.itertuples(index=False))
    return (f"The strategies compared are those of the latest comparison with results to compare "
            f"(α={shown['alpha']:g} β={shown['beta']:g} γ={shown['gamma']:g}), with the models it trained last. "
            f"Left out: {len(left)} completed trainings of other comparisons or earlier plans ({sets}); compare "
            "into another sweep (name=…) to keep them apart.")


def _compare_coefficients(compound: pd.DataFrame, metric: str) -> dict[str, float]:
    """The α, β, γ compound is shown with: those its rows at φ ≠ 1 were scaled with (the most rows, then
    the best mean), or else the search's best point, as `effscale compare` takes it."""
    scaled = compound[compound["phi"] != 1]
    if scaled.empty and not trained(search_trials(compound)).empty:
        return dict(zip(COEFFICIENTS, best_point(compound, metric)))
    means = (scaled if not scaled.empty else compound).groupby(COEFFICIENTS)[metric].agg(["size", "mean"])
    return dict(zip(COEFFICIENTS, means.sort_values(["size", "mean"], ascending=False).index[0]))


# --- the numbers of the report ----------------------------------------------------------------------


def _order(strategy: str) -> tuple[int, str]:
    ranks = {"baseline": 0, "compound": 1, "width": 2, "depth": 3, "resolution": 4}
    return ranks.get(strategy, 5), strategy


def strategy_summary(df: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """One row per (strategy, φ): n seeds, mean ± 95 % CI of the metric, mean MACs, params, cost."""
    rows = comparison_rows(df, metric)
    out = []
    for (strategy, phi), group in rows.groupby(["strategy", "phi"]):
        mean, half, n = mean_ci(group[metric])
        row = {"strategy": strategy, "phi": phi, "n": n, "mean": mean, "ci95": half,
               "std": float(group[metric].dropna().std(ddof=1)) if n > 1 else math.nan}
        if "test_acc" in group and metric != "test_acc":
            row["test_mean"], row["test_ci95"], _ = mean_ci(group["test_acc"])
        for column in ("macs", "macs_ratio", "params", "train_seconds", "peak_mem_mb", "depth_mult", "width_mult",
                       "resolution"):
            if column in group:
                row[column] = group[column].mean()
        out.append(row)
    summary = pd.DataFrame(out)
    if summary.empty:
        return summary
    if "macs" in summary:
        # How far each model's measured MACs sit from the compound model's at the same φ: integer
        # rounding can leave no architecture of a strategy within the matching tolerance.
        compound = summary[summary["strategy"] == "compound"].set_index("phi")["macs"]
        summary["macs_vs_compound"] = summary["macs"] / summary["phi"].map(compound) - 1
    summary["_rank"] = summary["strategy"].map(_order)
    return summary.sort_values(["_rank", "phi"]).drop(columns="_rank").reset_index(drop=True)


def compound_margin(summary: pd.DataFrame) -> pd.DataFrame:
    """At each φ > 0: compound's mean minus the best single dimension's mean (width, depth or
    resolution alone), with the 95 % interval of that difference (Welch); a gap whose interval
    includes zero is within noise. Two means' own intervals may overlap while their difference is
    still clear, so the difference is what is tested."""
    out = []
    if summary.empty:
        return pd.DataFrame(out)
    for phi, at_phi in summary[summary["phi"] > 0].groupby("phi"):
        compound = at_phi[at_phi["strategy"] == "compound"]
        singles = at_phi[at_phi["strategy"].isin(SINGLE_DIMENSIONS)]
        if compound.empty or singles.empty:
            continue
        c = compound.iloc[0]
        best = singles.loc[singles["mean"].idxmax()]
        margin = c["mean"] - best["mean"]
        half = welch_half_width(c["std"], c["n"], best["std"], best["n"])
        if math.isnan(half):
            verdict = "one seed: no interval"
        elif half < 1e-9:  # every seed of both scored alike (to rounding): often networks that predict one class
            verdict = "no spread: no interval"
        elif abs(margin) <= half:
            verdict = "within noise"
        else:
            verdict = "compound ahead" if margin > 0 else "compound behind"
        out.append({"phi": phi, "compound": c["mean"], "compound_ci95": c["ci95"], "compound_n": c["n"],
                    "best_single": best["strategy"], "best_single_mean": best["mean"],
                    "best_single_ci95": best["ci95"], "best_single_n": best["n"], "margin": margin,
                    "margin_ci95": half, "verdict": verdict,
                    "best_single_macs_vs_compound": best.get("macs_vs_compound", math.nan)})
    return pd.DataFrame(out)


def welch_half_width(s1: float, n1: int, s2: float, n2: int) -> float:
    """Half-width of the 95 % interval of a difference of two means with unequal variances (Welch,
    1947), with the Welch–Satterthwaite degrees of freedom; NaN unless both have two values."""
    if n1 < 2 or n2 < 2 or math.isnan(s1) or math.isnan(s2):
        return math.nan
    v1, v2 = s1**2 / n1, s2**2 / n2
    if v1 + v2 == 0:
        return 0.0
    dof = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    return t_critical(dof) * math.sqrt(v1 + v2)


def search_table(df: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """The grid points of the search, best first: one row per (α, β, γ) with its state and mean ± CI.
    A point that repeats another's network (`same_as`) shows that point's seeds: it is the same network."""
    rows = search_rows(df)
    if rows.empty:
        return pd.DataFrame()
    out = []
    for (alpha, beta, gamma), group in rows.groupby(COEFFICIENTS):
        same = group["same_as"].dropna() if "same_as" in group and "point" in rows else ()
        network = rows[rows["point"] == same.iloc[0]] if len(same) else group
        done = completed(network, metric)
        mean, half, n = mean_ci(done[metric])
        states = group["state"].value_counts()
        state = "COMPLETE" if n else states.index[0]
        if len(same):  # trained once under another point: rounding gave both the same network
            state += f", same network as {same.iloc[0]}"
        row = {"alpha": alpha, "beta": beta, "gamma": gamma, "constraint": alpha * beta**2 * gamma**2,
               "state": state, "n": n, "mean": mean, "ci95": half, "same_as": same.iloc[0] if len(same) else None}
        for column in ("macs_ratio", "params", "peak_mem_mb"):
            if column in group:
                row[column] = group[column].mean()
        out.append(row)
    table = pd.DataFrame(out)
    if table.empty:
        return table
    return best_first(table, "mean")


def paper_comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """Paper table 7 beside our comparison at the φ whose MACs ratio is nearest the paper's 1.8 / 0.4."""
    if summary.empty or "macs_ratio" not in summary:
        return pd.DataFrame()
    target = PAPER_TABLE7["paper_gflops"].iloc[-1] / PAPER_TABLE7["paper_gflops"].iloc[0]
    scaled = summary[(summary["phi"] > 0) & summary["macs_ratio"].notna()]
    if scaled.empty:
        return pd.DataFrame()
    phi = scaled.loc[(scaled["macs_ratio"] - target).abs().idxmin(), "phi"]
    ours = summary[(summary["phi"] == phi) | (summary["strategy"] == "baseline")]
    ours = ours[[c for c in ("strategy", "phi", "depth_mult", "width_mult", "resolution", "macs_ratio", "n", "mean",
                             "ci95") if c in ours]]
    base = summary.loc[summary["strategy"] == "baseline", "resolution"] if "resolution" in summary else ()
    if len(base):
        ours = ours.assign(resolution_mult=ours["resolution"] / base.iloc[0])
    return PAPER_TABLE7.merge(ours, on="strategy", how="left")


# --- plots ------------------------------------------------------------------------------------------

_STYLE = {
    "compound": dict(color="#d62728", marker="o", lw=2.5, zorder=5),
    "width": dict(color="#1f77b4", marker="s"),
    "depth": dict(color="#2ca02c", marker="^"),
    "resolution": dict(color="#9467bd", marker="D"),
    "baseline": dict(color="black", marker="*", ms=12, zorder=6),
}
_EXTRA_COLORS = ["#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _style(strategy: str, extra: list[str]) -> dict:
    if strategy in _STYLE:
        return dict(_STYLE[strategy])
    if strategy not in extra:
        extra.append(strategy)
    return dict(color=_EXTRA_COLORS[extra.index(strategy) % len(_EXTRA_COLORS)], marker="v", ls="--")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(rows: pd.DataFrame) -> list[list[float]]:
    """The 95 % intervals as error bars in percent, cut at 0 and 100: with two or three seeds a
    t-interval can reach past what an accuracy can be, and would stretch the axis to -50 %."""
    half = rows["ci95"].fillna(0) * 100
    mean = rows["mean"] * 100
    return [list(half.clip(upper=mean)), list(half.clip(upper=100 - mean))]


def plot_accuracy_vs_cost(summary: pd.DataFrame, x: str, xlabel: str, title: str, path: Path) -> None:
    """Paper fig. 3 / fig. 8 style: one line per strategy through its φ points, each the mean over
    seeds with its 95 % interval as an error bar; every line starts at the shared baseline. A strategy
    that leaves `x` where the baseline has it (resolution alone leaves the parameters) is drawn a little
    to the right of it, and says so, rather than on top of the baseline's bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    baseline = summary[summary["strategy"] == "baseline"]
    extra: list[str] = []
    for strategy, group in summary[summary["strategy"] != "baseline"].groupby("strategy", sort=False):
        line = pd.concat([baseline, group]).sort_values(["phi"])
        style = _style(strategy, extra)
        beside = not baseline.empty and bool((group[x] == baseline[x].iloc[0]).all())
        xs = line[x] / 1e6 * (1.0 + 0.03 * line["phi"]) if beside else line[x] / 1e6
        label = f"{strategy} (the baseline's {x.replace('params', 'parameters')}: drawn beside it)" if beside \
            else strategy
        ax.errorbar(xs, line["mean"] * 100, yerr=_bars(line), capsize=3, label=label, **style)
        for (_, row), at in zip(line.iterrows(), xs):
            if row["phi"] > 0 and (strategy == "compound" or beside):
                ax.annotate(f"φ={row['phi']:g}", (at, row["mean"] * 100), textcoords="offset points",
                            xytext=(4, -11), fontsize=7, color=style["color"])
    if not baseline.empty:
        b = baseline.iloc[0]
        ax.errorbar([b[x] / 1e6], [b["mean"] * 100], yerr=_bars(baseline.iloc[:1]), capsize=3, ls="none",
                    label="baseline (φ=0)", **_STYLE["baseline"])
    _log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%), mean ± 95 % CI over seeds")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="scaling strategy", fontsize=8)
    _save(fig, path)


def _log_x(ax) -> None:
    """Log x axis labelled 20, 30, 50 rather than 2×10¹."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)


def heatmap_label(cell: pd.Series) -> str:
    """A trained cell's text: mean accuracy (%), its γ, and how many seeds the mean is over when the
    search trained it more than once (`search.extra_seeds` go to the best points only)."""
    seeds = f"\n{int(cell['n'])} seeds" if cell["n"] > 1 else ""
    return f"{cell['mean'] * 100:.1f}\nγ={cell['gamma']:.2f}{seeds}"


def plot_search_heatmap(table: pd.DataFrame, path: Path, phi: float = 1, metric: str = "val_acc") -> None:
    """Accuracy (`metric`) over the α (rows) × β (columns) grid searched at φ; γ follows from α·β²·γ² ≈ 2.
    Points outside the budget are hatched ×, points that failed are marked –, the best point is outlined."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    # Where γ is gridded too, one (α, β) cell shows its best γ (`table` is best first: search_table).
    cells = table.drop_duplicates(["alpha", "beta"])
    alphas, betas = sorted(cells["alpha"].unique()), sorted(cells["beta"].unique())
    grid = cells.pivot(index="alpha", columns="beta", values="mean").reindex(index=alphas, columns=betas) * 100
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(betas) + 1.5, 1.0 + 0.6 * len(alphas) + 1.2))
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", origin="lower", aspect="auto")
    what = {"val_acc": "validation accuracy", "test_acc": "test accuracy"}.get(metric, metric)
    fig.colorbar(image, ax=ax, label=f"{what} (%), mean over seeds")
    best = cells.dropna(subset=["mean"]).head(1)
    for _, cell in cells.iterrows():
        i, j = alphas.index(cell["alpha"]), betas.index(cell["beta"])
        if cell["state"] == "INFEASIBLE":
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#dddddd", hatch="xx", edgecolor="#888888"))
        elif pd.isna(cell["mean"]):
            ax.text(j, i, "–", ha="center", va="center", color="#555555")
        else:
            ax.text(j, i, heatmap_label(cell), ha="center", va="center",
                    fontsize=7, color="white" if cell["mean"] * 100 < grid.stack().mean() else "black")
    if not best.empty:
        b = best.iloc[0]
        i, j = alphas.index(b["alpha"]), betas.index(b["beta"])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=3))
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("β (width coefficient)")
    ax.set_ylabel("α (depth coefficient)")
    ax.set_title(f"Grid search at φ = {phi:g}: accuracy per (α, β)\n"
                 "red box: best; hatched ×: outside the budget (INFEASIBLE)")
    _save(fig, path)


def plot_cost(df: pd.DataFrame, path: Path) -> None:
    """Measured cost of every completed trial against its MACs: training time and peak memory."""
    plt = _pyplot()
    done = df[(df["state"] == "COMPLETE")].dropna(subset=["macs"])
    panels = [(c, label) for c, label in (("train_seconds", "training time (s)"),
                                          ("peak_mem_mb", "peak training memory (MB)")) if c in done]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    strategies = done["strategy"].where(done["phi"] != 0, "baseline")
    extra: list[str] = []
    for ax, (column, label) in zip(axes[0], panels):
        for strategy, group in done.groupby(strategies, sort=False):
            style = _style(strategy, extra)
            ax.scatter(group["macs"] / 1e6, group[column], label=strategy, color=style["color"],
                       marker=style["marker"], alpha=0.75)
        _log_x(ax)
        ax.set_xlabel("MACs per image (millions, log scale)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="strategy", fontsize=8)
    fig.suptitle("Measured cost vs MACs (every completed trial)")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    try:
        fig.tight_layout()
        write_atomically(path, lambda f: fig.savefig(f, dpi=110, bbox_inches="tight", format="png"), binary=True)
    finally:
        _pyplot().close(fig)


# --- the documents ----------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    image: str | None = None  # path relative to the report


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _pm(mean: float, half: float) -> str:
    """0.8123, 0.0045 → '81.23 ± 0.45' (percent)."""
    if math.isnan(mean):
        return "–"
    return f"{mean * 100:.2f}" if math.isnan(half) else f"{mean * 100:.2f} ± {half * 100:.2f}"


def _millions(x: float) -> str:
    return "–" if pd.isna(x) else f"{x / 1e6:.2f}"


def _summary_view(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    view = pd.DataFrame({"strategy": summary["strategy"], "φ": summary["phi"].map("{:g}".format),
                         "n seeds": summary["n"]})
    if "macs" in summary:
        view["MACs (M)"] = summary["macs"].map(_millions)
    if "macs_ratio" in summary:
        view["MACs ratio"] = summary["macs_ratio"].map("{:.2f}".format)
    if "macs_vs_compound" in summary:
        view["MACs vs compound"] = summary["macs_vs_compound"].map(lambda v: "–" if pd.isna(v) else f"{v:+.1%}")
    if "params" in summary:
        view["params (M)"] = summary["params"].map(_millions)
    view[f"{metric} (%)"] = [_pm(m, h) for m, h in zip(summary["mean"], summary["ci95"])]
    if "test_mean" in summary:
        view["test_acc (%)"] = [_pm(m, h) for m, h in zip(summary["test_mean"], summary["test_ci95"])]
    if "train_seconds" in summary:
        view["train s"] = summary["train_seconds"].map("{:.0f}".format)
    return view


def _margin_view(margin: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "φ": margin["phi"].map("{:g}".format),
        "compound (%)": [_pm(m, h) for m, h in zip(margin["compound"], margin["compound_ci95"])],
        "best single dimension": margin["best_single"],
        "its accuracy (%)": [_pm(m, h) for m, h in zip(margin["best_single_mean"], margin["best_single_ci95"])],
        "margin (points)": [f"{m * 100:+.2f}" + ("" if math.isnan(h) else f" ± {h * 100:.2f}")
                            for m, h in zip(margin["margin"], margin["margin_ci95"])],
        "verdict": margin["verdict"],
    })


def _search_view(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    view = pd.DataFrame({"α": table["alpha"].map("{:g}".format), "β": table["beta"].map("{:g}".format),
                         "γ": table["gamma"].map("{:g}".format),
                         "α·β²·γ²": table["constraint"].map("{:.3f}".format)})
    if "macs_ratio" in table:
        view["MACs ratio"] = table["macs_ratio"].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
    if "peak_mem_mb" in table:
        view["peak MB"] = table["peak_mem_mb"].map(megabytes)
    view["state"] = table["state"]
    view["n seeds"] = table["n"]
    view[f"{metric} (%)"] = [_pm(m, h) for m, h in zip(table["mean"], table["ci95"])]
    return view


def _paper_view(paper: pd.DataFrame) -> pd.DataFrame:
    view = {
        "method": paper["strategy"], "paper: scale": paper["paper_scale"],
        "paper: billion FLOPs (multiply-adds)": paper["paper_gflops"].map("{:g}".format),
        "paper: ImageNet top-1 (%)": paper["paper_top1"].map("{:.1f}".format),
        "ours: φ": paper["phi"].map(lambda v: "–" if pd.isna(v) else f"{v:g}"),
    }
    if {"depth_mult", "width_mult", "resolution_mult"} <= set(paper):
        view["ours: scale"] = [
            "–" if pd.isna(d) else f"d = {d:.2f}, w = {w:.2f}, r = {r:.2f}"
            for d, w, r in zip(paper["depth_mult"], paper["width_mult"], paper["resolution_mult"])]
    view["ours: MACs ratio"] = paper["macs_ratio"].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
    view["ours: accuracy (%)"] = [_pm(m, h) for m, h in zip(paper["mean"], paper["ci95"])]
    return pd.DataFrame(view)


def _describe(df: pd.DataFrame) -> str:
    states = ", ".join(f"{n} {s}" for s, n in df["state"].value_counts().items())
    parts = [f"{len(df)} rows ({states})."]
    for column, label in (("dataset", "data"), ("baseline", "baseline"), ("epochs", "epochs"), ("device", "device"),
                          ("precision", "precision")):
        if column in df and df[column].notna().any():
            values = ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                               for v in sorted(df[column].dropna().unique(), key=str))
            parts.append(f"{label}: {values}.")
    mixed = mixed_training(df)
    if mixed:
        parts.append(f"**{mixed[0].upper()}{mixed[1:]}.**")
    return " ".join(parts)


def margin_sentences(margin: pd.DataFrame) -> str:
    """One sentence per φ: how far compound is ahead of (or behind) the best single dimension, and
    whether that gap is larger than the noise over seeds."""
    lines = []
    for _, m in margin.iterrows():
        points = abs(m["margin"]) * 100
        gap = f"{points:.2f} points {'ahead of' if m['margin'] >= 0 else 'behind'} {m['best_single']}"
        off = m.get("best_single_macs_vs_compound", math.nan)
        if not pd.isna(off) and round(abs(off) * 100, 1) > 0:  # rounding left no model of that strategy closer
            gap += f" (whose model has {abs(off) * 100:.1f} % {'more' if off > 0 else 'fewer'} MACs)"
        noise = f"± {m['margin_ci95'] * 100:.2f} points (95 % interval of the difference)"
        if m["verdict"] == "within noise":
            lines.append(f"At φ = {m['phi']:g} compound is {gap}, {noise}: within noise.")
        elif m["verdict"] == "compound ahead":
            lines.append(f"At φ = {m['phi']:g} compound is {gap}, {noise}: beyond noise.")
        elif m["verdict"] == "compound behind":
            lines.append(f"At φ = {m['phi']:g} compound is {gap}, {noise}: the best single dimension wins "
                         "beyond noise.")
        elif m["verdict"] == "no spread: no interval":
            lines.append(f"At φ = {m['phi']:g} compound is {gap}; every seed of each scored the same (often a "
                         "network that predicts one class): no interval, no verdict.")
        else:
            seeds = "one seed each" if m["compound_n"] == m["best_single_n"] == 1 else \
                f"{'compound' if m['compound_n'] == 1 else m['best_single']} has one seed"
            lines.append(f"At φ = {m['phi']:g} compound is {gap} ({seeds}: no interval, no verdict).")
    return " ".join(lines)


# The plots a report draws (plots/<name>.png), each when the table supports it.
PLOTS = ("accuracy_vs_macs", "accuracy_vs_params", "search_heatmap", "cost_vs_macs")


def build_report(df: pd.DataFrame, plots: Path, title: str, metric: str = "val_acc") -> Report:
    """Draw the plots the table supports into `plots/` and assemble the sections of the report."""
    check_metric(df, metric)
    report = Report(title=title, sections=[Section("Sweep", _describe(df))])
    summary = strategy_summary(df, metric)
    grid = search_table(df, metric)

    if not summary.empty:
        for x, name, xlabel in (("macs", "accuracy_vs_macs", "MACs per image (millions, log scale; FLOPs = 2 × MACs)"),
                                ("params", "accuracy_vs_params", "parameters (millions, log scale)")):
            if x in summary and summary[x].notna().all():
                path = plots / f"{name}.png"
                plot_accuracy_vs_cost(summary, x, xlabel, f"{metric} vs {x.replace('macs', 'MACs')} "
                                      "by scaling strategy", path)
                report.files.append(path)
        shown = " ".join(filter(None, ["Mean ± 95 % t-interval over seeds (n seeds per row).",
                                       other_comparisons(df, metric)]))
        report.sections.append(Section(
            "Strategies at matched MACs", shown,
            _summary_view(summary, metric), _relative(report.files, "accuracy_vs_macs")))
        params_plot = _relative(report.files, "accuracy_vs_params")
        if params_plot:
            report.sections.append(Section("Accuracy vs parameters", image=params_plot))
        margin = compound_margin(summary)
        if not margin.empty:
            report.sections.append(Section(
                "Compound vs the best single dimension",
                "Margin = compound's mean minus the best of width, depth and resolution alone at the same φ, "
                "in accuracy points. " + margin_sentences(margin), _margin_view(margin)))
        paper = paper_comparison(summary)
        if not paper.empty:
            report.sections.append(Section("Beside the paper (table 7, ImageNet)", PAPER_NOTE, _paper_view(paper)))

    if not grid.empty:
        phi = float(search_rows(df)["phi"].iloc[0])
        path = plots / "search_heatmap.png"
        plot_search_heatmap(grid, path, phi, metric)
        report.files.append(path)
        report.sections.append(Section(
            f"Grid search at φ = {phi:g}",
            "Best first; mean ± 95 % t-interval over seeds (n per row; one seed, no interval). INFEASIBLE "
            "points were outside the budget (MACs ratio off 2^φ by more than the tolerance, or a bound "
            "exceeded) and never trained.",
            _search_view(grid, metric), _relative(report.files, "search_heatmap")))

    if "macs" in df and ({"train_seconds", "peak_mem_mb"} & set(df.columns)) and \
            not completed(df, metric).dropna(subset=["macs"]).empty:
        path = plots / "cost_vs_macs.png"
        plot_cost(df, path)
        report.files.append(path)
        report.sections.append(Section(
            "Measured cost",
            "Training time is each trial's wall clock, so it also shows what ran beside it (other workers, "
            "other jobs, threads per trial). Peak memory is one training batch, estimated from the tensors "
            "autograd saves (measured by CUDA's allocator instead where budget.max_peak_mem_mb bounds a run on "
            "a GPU).",
            image=_relative(report.files, "cost_vs_macs")))
    if summary.empty and grid.empty:
        report.sections.append(Section("Nothing to compare yet", " ".join(filter(None, [
            "The table has no strategy comparison and no search grid of two or more completed points.",
            other_comparisons(df, metric)]))))
    return report


def _relative(files: list[Path], stem: str) -> str | None:
    return next((f"plots/{p.name}" for p in files if p.stem == stem), None)


# --- rendering ----------------------------------------------------------------------------------------


def to_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.image:
            lines += [f"![{section.title}]({section.image})", ""]
        if section.table is not None and not section.table.empty:
            lines += _markdown_table(section.table) + [""]
    return "\n".join(lines)


def _markdown_table(table: pd.DataFrame) -> list[str]:
    cells = [[str(c) for c in table.columns]] + [[str(v) for v in row] for row in table.itertuples(index=False)]
    escape = lambda s: s.replace("|", "\\|")
    return ["| " + " | ".join(escape(c) for c in row) + " |" for row in cells[:1]] + \
        ["|" + "|".join("---" for _ in table.columns) + "|"] + \
        ["| " + " | ".join(escape(c) for c in row) + " |" for row in cells[1:]]


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #d62728}table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}"""


def to_html(report: Report, folder: Path) -> str:
    """One self-contained page: images inlined as base64 (the page still works when moved alone)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(report.title)}</h1>"]
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            text = html.escape(section.text).replace("*same*", "<em>same</em>")
            text = re.sub(r"[*][*](.+?)[*][*]", r"<strong>\1</strong>", text)  # markdown's bold, as to_markdown has it
            parts.append(f"<p>{text}</p>")
        if section.image:
            src = "data:image/png;base64," + base64.b64encode((folder / section.image).read_bytes()).decode()
            parts.append(f"<img src='{src}' alt='{html.escape(section.title)}'>")
        if section.table is not None and not section.table.empty:
            parts.append(section.table.to_html(index=False, border=0, escape=True))
    parts.append("</body></html>")
    return "\n".join(parts)


def check_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in METRICS:
        raise UserError(f"--metric {metric}: expected {' or '.join(METRICS)}")
    if metric not in df:
        raise UserError(f"--metric {metric}: the results table has no such column")
    if metric == "test_acc" and df["test_acc"].isna().all() and df["val_acc"].notna().any():
        raise UserError("--metric test_acc: no trial has a test accuracy (the data has no test split of its "
                        "own, such as an image folder without test/); rank by val_acc")


def write_report(folder: str | Path, out: str | Path | None = None, metric: str = "val_acc") -> list[Path]:
    """Read `folder/trials.csv`; write `plots/*.png`, `report.md` and `report.html` into `out`
    (default: the sweep folder). Returns the files written.

    Everything is drawn into a hidden folder in `out` and renamed into place at the end, so an error or
    Ctrl-C on the way leaves the previous report as it was, and no file half-written."""
    folder = Path(folder)
    df = load_trials(folder)
    check_metric(df, metric)  # before anything is written
    out = Path(out) if out is not None else (folder if folder.suffix != ".csv" else folder.parent)
    name = (folder if folder.suffix != ".csv" else folder.parent).resolve().name
    new = first_new_folder(out / "plots")  # removed again if the report fails: nothing left behind
    try:
        for where in (out, out / "plots"):  # before anything is drawn
            try:
                where.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # --out names a file, or a folder this user cannot write
                raise UserError(f"{where}: cannot write the report there ({exc.strerror})") from None
            if not os.access(where, os.W_OK | os.X_OK):
                raise UserError(f"{where}: cannot write the report there ({os.strerror(errno.EACCES)})")
        files = [out / "report.md", out / "report.html", *(out / "plots" / f"{stem}.png" for stem in PLOTS)]
        for path in files:
            if path.is_dir():  # not found at the last rename, with report.md already in place
                raise UserError(f"{path}: a folder where the report writes a file; move it aside or write the "
                                "report elsewhere (--out)")
        return _draw_and_move(df, out, f"effscale report — {name}", metric)
    except BaseException as exc:  # Ctrl-C included
        remove_created(new, out / "plots")
        if isinstance(exc, OSError):  # a full disk, or the folder changed while drawing
            raise UserError(f"{out}: cannot write the report there ({exc.strerror or exc})") from None
        raise


def _move(path: Path, place: Path) -> None:
    """Rename `path` over `place`; where `place` is on another file system (plots/ a link to another
    disk), write a copy beside it and rename that."""
    try:
        os.replace(path, place)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        write_atomically(place, lambda f: f.write(path.read_bytes()), binary=True)


def _draw_and_move(df: pd.DataFrame, out: Path, title: str, metric: str) -> list[Path]:
    """The report drawn in a new hidden folder in `out`, then each file renamed over its place in `out`."""
    staging = Path(tempfile.mkdtemp(prefix=".report.", dir=out))
    try:
        report = build_report(df, staging / "plots", title, metric)
        markdown, page = to_markdown(report), to_html(report, staging)
        for path, text in ((staging / "report.md", markdown), (staging / "report.html", page)):
            write_atomically(path, lambda f, text=text: f.write(text))
            report.files.append(path)
        placed = [out / path.relative_to(staging) for path in report.files]
        for path, place in zip(report.files, placed):
            _move(path, place)
        for stale in {out / "plots" / f"{stem}.png" for stem in PLOTS} - set(placed):
            stale.unlink(missing_ok=True)  # drawn by an earlier report; this table no longer supports it
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)
