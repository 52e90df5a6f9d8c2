"""`effscale compare`: compound scaling against one dimension at a time, at matched MACs.

Paper section 3.3 (eq. 3), table 3 (section 5.1) and fig. 8 (section 6): scale the baseline by
compound coefficients α, β, γ at each φ, then scale it by width alone, depth alone and resolution
alone (and any pycls-style weighting such as 'd1_w8_r1') to the *same* cost, train every model with
the same recipe and seeds, and compare.

"The same cost" is the compound model's *measured* MACs, not the analytic 2^φ: channels round to
multiples of 8, repeats to whole layers and inputs to whole pixels, so d·w²·r² is only a guess. Each
other strategy's FLOPs multiplier is solved numerically (bisection on the measured MACs, counted on
the meta device in a fraction of a second) to the step of its staircase nearest the compound model's
MACs; `compare.macs_tolerance` says how far off that may be and still count as matched.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from effscale import results
from effscale.errors import UserError
from effscale.files import log_to, make_sweep_folder, remove_created
from effscale.scaling import (Multipliers, ScalingError, check_coefficients, compound_multipliers, constraint_value,
                              scale_stage_table, strategy_multipliers)


def solve_multiplier(ratio_at: Callable[[float], float], target: float, max_steps: int = 40) -> tuple[float, float]:
    """The FLOPs multiplier s ≥ 1 whose measured MACs ratio `ratio_at(s)` is nearest `target`.

    `ratio_at` is a non-decreasing step function (every dimension rounds to integers), so bisect in
    log space from the analytic guess s = target until the bracket closes on the step edge where the
    ratio crosses the target (or lands on it): the two steps either side of that edge hold the ratios
    nearest the target from below and from above. Returns (s, its ratio), the nearer of the two in
    log ratio. The first step within a tolerance is not enough: the next one may be nearer.
    Every s on a step builds the same network; of those tried, the one nearest the analytic guess is
    returned, not one just past the edge (depth 1.0000006 adds a layer to every stage, as 1.35 does,
    but reads as no depth scaling in a table).
    """
    if target <= 1:
        return 1.0, ratio_at(1.0)
    seen: dict[float, float] = {}

    def at(s: float) -> float:
        seen[s] = ratio_at(s)
        return seen[s]

    def landed_on_target() -> bool:
        return target in seen.values()

    lo, hi = 1.0, target
    at(lo)  # the unscaled model: the nearest when the first step up overshoots further (depth's often does)
    if at(hi) < target:
        lo = hi
        while at(hi := hi * 2) < target:
            if hi > 1e4 * target:
                break
            lo = hi
    for _ in range(max_steps):
        if landed_on_target() or hi / lo < 1 + 1e-6:
            break
        mid = math.sqrt(lo * hi)
        if at(mid) < target:
            lo = mid
        else:
            hi = mid
    s = min(seen, key=lambda k: (abs(math.log(seen[k] / target)), abs(math.log(k / target)), k))
    return s, seen[s]


@dataclass
class ScaledModel:
    """One model of the comparison: a strategy at φ, its stage table and its measured MACs."""

    strategy: str
    phi: float
    flops_mult: float          # the multiplier handed to the strategy (analytic d·w²·r²)
    mult: Multipliers
    table: dict[str, Any] = field(repr=False)
    macs: int
    macs_ratio: float          # measured, over the baseline's measured MACs
    target_ratio: float        # the compound model's measured ratio at this φ
    tolerance: float

    @property
    def matched(self) -> bool:
        return abs(self.macs_ratio / self.target_ratio - 1) <= self.tolerance + 1e-12


class MacsCounter:
    """MACs of the model a stage table describes, counted on the meta device and cached per
    architecture and input size: the bisection revisits the same rounded architecture many times."""

    def __init__(self, build: Callable[[dict[str, Any]], Any], in_channels: int = 3) -> None:
        self.build = build
        self.in_channels = in_channels
        self._cache: dict[tuple[str, int], int] = {}

    def __call__(self, table: dict[str, Any]) -> int:
        from effscale.measure import architecture_key, build_on_meta, count_training_forward

        key = architecture_key(table), int(table["resolution"])
        if key not in self._cache:

            model = build_on_meta(self.build, table)
            self._cache[key] = count_training_forward(model, int(table["resolution"]), 1, self.in_channels)[0]
        return self._cache[key]


def matched_models(base: dict[str, Any], strategies: list[str], phi: float, alpha: float, beta: float,
                   gamma: float, macs_of: Callable[[dict[str, Any]], int], tolerance: float = 0.05,
                   resolution_multiple: int = 1) -> list[ScaledModel]:
    """The compound model at φ (paper eq. 3) and each other strategy at the compound model's measured
    MACs ratio. At φ = 0 every strategy is the baseline itself: one model, strategy 'baseline'."""
    base_macs = macs_of(scale_stage_table(base, Multipliers(), resolution_multiple))

    def scaled(mult: Multipliers) -> tuple[dict[str, Any], float]:
        table = scale_stage_table(base, mult, resolution_multiple)
        return table, macs_of(table) / base_macs

    if phi == 0:
        table, ratio = scaled(Multipliers())
        return [ScaledModel("baseline", 0, 1.0, Multipliers(), table, base_macs, ratio, 1.0, tolerance)]
    mult = compound_multipliers(alpha, beta, gamma, phi)
    table, target = scaled(mult)
    models = [ScaledModel("compound", phi, mult.flops_ratio, mult, table, round(target * base_macs), target, target,
                          tolerance)]
    for strategy in strategies:
        if strategy == "compound":
            continue
        s, ratio = solve_multiplier(lambda s: scaled(strategy_multipliers(strategy, s))[1], target)
        mult = strategy_multipliers(strategy, s)
        table, ratio = scaled(mult)
        models.append(ScaledModel(strategy, phi, s, mult, table, round(ratio * base_macs), ratio, target, tolerance))
    return models


# --- the command: plan every model, then train each (strategy, φ, seed) not yet in the table ---------

SUMMARY_KEYS = ("val_acc", "test_acc", "macs", "params", "train_seconds")
log = logging.getLogger("effscale.compare")


def row_key(row: dict[str, Any]) -> tuple:
    """What makes a row the training of one planned model: its results-table key and the model."""
    model = (round(float(row[c]), 6) for c in results.MODEL_COLUMNS)
    return (row["point"], int(row["seed"]), row["strategy"], *model)


def compare_point(phi: float, alpha: float, beta: float, gamma: float) -> str:
    """A row's point id: the φ and the compound coefficients every model of that φ is matched to, so
    a comparison with other coefficients never resumes from (or overwrites) this one's rows."""
    return f"{results.COMPARE_PREFIX}phi{phi:g}_a{alpha:g}_b{beta:g}_g{gamma:g}"


@dataclass(frozen=True)
class Coefficients:
    alpha: float
    beta: float
    gamma: float
    origin: str                      # where they came from, for the plan's first line
    search_seeds: tuple[int, ...] = ()  # the seeds the search trained: it chose its point on them


def coefficients(cfg: dict[str, Any]) -> Coefficients:
    """α, β, γ for the comparison and where they came from: the best point of the search in
    `compare.from_search`, or `scale.alpha/beta/gamma`."""

    source = cfg["compare"].get("from_search")
    if source:
        table = results.table_path(source)
        if not table.is_file():
            raise UserError(f"compare.from_search={source}: no results table {table} (run effscale search first)")
        trials = results.read_trials(table)
        searched = trials[~results.from_compare(trials)]
        try:
            alpha, beta, gamma = results.best_point(searched)
        except (KeyError, ValueError):
            raise UserError(f"compare.from_search={source}: no completed search trial in {table}") from None
        origin, seeds = f"best point of {source}", tuple(sorted({int(s) for s in searched["seed"].dropna()}))
    else:
        scale = cfg.get("scale") or {}
        missing = next((k for k in ("alpha", "beta", "gamma") if scale.get(k) is None), None)
        if missing:  # scale=null or ~scale.alpha
            raise UserError(f"scale.{missing}: not set; a comparison takes α, β, γ from scale.alpha, scale.beta and "
                            "scale.gamma, or from a search (compare.from_search=results/<sweep>)")
        alpha, beta, gamma = (float(scale[k]) for k in ("alpha", "beta", "gamma"))
        origin, seeds = "scale.alpha/beta/gamma", ()
    try:
        check_coefficients(alpha, beta, gamma)
    except ScalingError as exc:
        raise UserError(str(exc)) from None
    return Coefficients(alpha, beta, gamma, origin, seeds)


# Keys of the scaled stage table a search records, by the settings that make them (the input size:
# data.resolution, or the baseline's own where that is null).
AS_TYPED = {"baseline.depth_mult": "scale.depth", "baseline.width_mult": "scale.width",
            "baseline.resolution": "data.resolution"}


def check_searched_like(source: str, baseline: dict[str, Any], dataset: str, classes: list[str]) -> None:
    """A search chooses its point for its baseline (the whole scaled stage table: blocks, input size,
    dropout…) and data (its name and, where the search recorded them, its classes): α, β, γ compared on
    others answer another question. One line naming the first difference, read from the table's rows
    and the search's settings.json."""
    said = f"compare.from_search={source}: the search ran on"
    hint = ("; give the comparison the search's settings (its +sweep preset and overrides), or scale.alpha, "
            "scale.beta and scale.gamma in place of compare.from_search to scale this baseline by them")
    searched = results.search_trials(results.read_trials(results.table_path(source)))
    for key, ours in (("baseline", baseline["name"]), ("dataset", dataset)):
        theirs = sorted(set(searched.get(key, pd.Series()).dropna().astype(str)) - {ours})
        if theirs:
            raise UserError(f"{said} {key} {theirs[0]}, this comparison on {ours}{hint}")
    recorded = results.recorded_settings(source, "search") or {}
    for section, theirs, ours in (("baseline", recorded.get("baseline"), baseline),
                                  ("data", {"classes": (recorded.get("data") or {}).get("classes", classes)},
                                   {"classes": classes})):
        found = results.differences(theirs, results.as_recorded(ours)) if isinstance(theirs, dict) else []
        if found:
            key, was, now = found[0]
            key = AS_TYPED.get(f"{section}.{key}", f"{section}.{key}")
            raise UserError(f"{said} {key} {results.shown(was, now)}, this comparison on "
                            f"{results.shown(now, was)}{hint}")


def comparison_seeds(first: int, count: int, search_seeds: tuple[int, ...]) -> list[int]:
    """`count` seeds from `first`, or from past the search's seeds when it chose the compound point:
    trained on those again, compound would repeat the very runs that made it the winner (the same
    numbers, as training is deterministic), a selection bias no other strategy has."""
    if search_seeds:
        first = max(first, max(search_seeds) + 1)
    return list(range(first, first + count))


@dataclass
class Comparison:
    """One `effscale compare` sweep: its models at every φ, its seeds, and the loop that trains them."""

    cfg: dict[str, Any]
    baseline: dict[str, Any]   # the model the config describes (as the search's): φ = 0 of every strategy
    device: str
    say: Callable[[str], None] = print

    def __post_init__(self) -> None:

        opts = self.cfg["compare"]
        self.sweep_dir = Path(self.cfg["out"]) / str(self.cfg["name"])
        # A comparison trains (strategies x phis x seeds) models: compare.trainer may shorten its recipe.
        self.recipe = {**self.cfg["trainer"], **(opts.get("trainer") or {})}
        self.phis = list(dict.fromkeys(float(p) for p in opts["phis"]))  # each once, in the order given
        self.strategies = list(dict.fromkeys(opts["strategies"]))
        self.tolerance = float(opts["macs_tolerance"])
        self.context = {"baseline": self.baseline["name"], "dataset": self.cfg["data"]["name"]}
        self.logger_kind = self.cfg["logger"]["name"]
        for strategy in set(self.strategies) - {"compound"}:
            try:
                strategy_multipliers(strategy, 2.0)
            except ValueError:
                raise UserError(f"compare.strategies: unknown strategy {strategy!r}; expected compound, width, "
                                "depth, resolution or a pycls weighting such as d1_w8_r1") from None

    def plan(self) -> list[ScaledModel]:
        """Every model of the comparison with its measured cost; nothing is trained or written."""
        from effscale.data import build_datamodule
        from effscale.measure import measure_tables
        from effscale.models import build_model
        from effscale.budget import measure_options, over_budget
        from effscale.train import set_threads, trial_devices

        set_threads(self.recipe.get("threads"))
        trial_devices(self.recipe, self.device)  # more GPUs than this process sees: one error, nothing written
        chosen = coefficients(self.cfg)
        self.alpha, self.beta, self.gamma, self.origin = chosen.alpha, chosen.beta, chosen.gamma, chosen.origin
        self.search_seeds = chosen.search_seeds
        self.seeds = comparison_seeds(int(self.cfg["seed"]), int(self.cfg["compare"]["seeds"]), chosen.search_seeds)
        data_cfg = self.cfg["data"]
        self.data = build_datamodule(data_cfg, int(self.baseline["resolution"]), int(data_cfg["batch_size"]),
                                     self.recipe.get("num_workers"), self.seeds[0])
        if self.cfg["compare"].get("from_search"):
            check_searched_like(self.cfg["compare"]["from_search"], self.baseline, self.context["dataset"],
                                self.data.class_names)
        classes, channels = self.data.num_classes, self.data.in_channels
        build = lambda t: build_model(t, classes, channels)  # noqa: E731
        counter = MacsCounter(build, channels)
        multiple = int((self.cfg.get("scale") or {}).get("resolution_multiple") or 1)
        try:
            self.models = [m for phi in self.phis for m in matched_models(
                self.baseline, self.strategies, phi, self.alpha, self.beta, self.gamma, counter, self.tolerance,
                multiple)]
        except ScalingError as exc:  # a φ far past any network a device trains
            raise UserError(f"compare.phis: {exc}") from None
        # Measured as a search measures its grid: one count per architecture and input size, peak memory
        # a real CUDA step only when the budget bounds it.
        options = measure_options({**self.cfg, "trainer": self.recipe}, self.device, channels)
        costs = measure_tables([m.table for m in self.models], build, **options)
        self.costs = {id(m): cost for m, cost in zip(self.models, costs)}
        # A model outside a bound set on params, peak memory or latency is recorded INFEASIBLE, not trained.
        budget = self.cfg.get("budget") or {}
        self.over_budget = {id(m): "; ".join(over_budget(cost, budget)) for m, cost in zip(self.models, costs)}
        if all(self.over_budget.values()):
            first = self.models[0]
            raise UserError(f"budget: none of the {len(self.models)} models of the comparison fits (the first, "
                            f"{first.strategy} at phi={first.phi:g}: {self.over_budget[id(first)]})")
        over = next((m for m in self.models if m.strategy == "compound" and self.over_budget[id(m)]), None)
        if over is not None:  # the other strategies at that φ are matched to a model nobody may train
            reason = self.over_budget[id(over)]
            raise UserError(f"budget: the compound model at phi={over.phi:g} is over it ({reason}), "
                            "so nothing at that phi has a model to be compared with; raise the budget or leave "
                            f"{over.phi:g} out of compare.phis")
        self.data.read()  # once the budget leaves something to train: a folder of images may take minutes
        return self.models

    def describe_plan(self) -> str:
        seeds = _seed_range(self.seeds)
        if self.seeds[0] > int(self.cfg["seed"]):
            seeds += ", past those the search chose its point on"
        lines = [f"{self.context['baseline']} on {self.context['dataset']} at {self.baseline['resolution']} px; "
                 f"compound alpha={self.alpha:g} beta={self.beta:g} gamma={self.gamma:g} ({self.origin}); "
                 f"{len(self.models)} models x {len(self.seeds)} seed{'s' * (len(self.seeds) != 1)} ({seeds}), "
                 "MACs matched within "
                 f"{self.tolerance:.0%} of compound's",
                 f"{'strategy':<12} {'phi':>4} {'depth':>6} {'width':>6} {'res':>4} {'MACs x':>7}  matched"]
        for m in self.models:
            miss = "" if m.matched else f"  no: nearest is {m.macs_ratio / m.target_ratio - 1:+.1%} off"
            over = f"  over budget: {self.over_budget[id(m)]}" if self.over_budget[id(m)] else ""
            lines.append(f"{m.strategy:<12} {m.phi:>4g} {m.mult.depth:>6.3f} {m.mult.width:>6.3f} "
                         f"{m.table['resolution']:>4} {m.macs_ratio:>7.2f}  {'yes' if m.matched else ''}{miss}{over}")
        return "\n".join(lines)

    def row(self, model: ScaledModel) -> dict[str, Any]:
        """The columns a model has before training. α, β, γ are the compound coefficients this model is
        matched against; its own scaling is in depth_mult, width_mult and resolution."""
        return {
            "strategy": model.strategy, "phi": model.phi, "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma,
            "depth_mult": round(model.mult.depth, 6), "width_mult": round(model.mult.width, 6),
            **self.costs[id(model)].cost_columns(), "macs_ratio": round(model.macs_ratio, 4),
            "feasible": not self.over_budget[id(model)],
            "constraint": round(constraint_value(self.alpha, self.beta, self.gamma), 4),
            "point": compare_point(model.phi, self.alpha, self.beta, self.gamma), **self.context,
        }

    def run(self) -> pd.DataFrame:
        """Train every (model, seed) whose row is not already COMPLETE, updating the table after each."""
        self.table = results.table_path(self.sweep_dir)
        existing = results.read_trials(self.table)  # a table that cannot be read: one error, nothing written
        new = make_sweep_folder(self.sweep_dir, self.cfg["out"])  # out= a file, or a folder this user may not write in
        try:
            return self._run(existing)
        except BaseException:
            if not self.table.exists():  # refused or stopped before its first row: no folder left half-written
                remove_created(new, self.sweep_dir)
            raise

    def _run(self, existing: pd.DataFrame) -> pd.DataFrame:
        settings = results.trained_with(self.baseline, self.cfg["data"], self.data.class_names, self.recipe)
        results.check_settings(self.sweep_dir, "compare", settings)
        self.say(self.describe_plan())  # once the folder is known to take this plan
        log_to(log, self.sweep_dir / "compare.log")
        complete = existing[existing["state"] == "COMPLETE"] if not existing.empty else existing
        self.warn_of_selected_runs(complete)
        # Settled: a COMPLETE row, or an INFEASIBLE one of a model still over the budget (a raised budget trains it).
        done = {row_key(r) for r in complete.to_dict("records")}
        recorded = set() if existing.empty else \
            {row_key(r) for r in existing[existing["state"] == "INFEASIBLE"].to_dict("records")}
        pairs = [(m, seed, row_key(self.row(m) | {"seed": seed})) for m in self.models for seed in self.seeds]
        pending = [(m, seed, key) for m, seed, key in pairs
                   if key not in done and not (self.over_budget[id(m)] and key in recorded)]
        jobs = [(m, seed) for m, seed, _ in pending]
        self.keep_replaced(complete, {key[:3] for _, _, key in pending})
        over = sum(bool(self.over_budget[id(m)]) for m, _, _ in pairs)
        self.say(f"{len(done & {key for _, _, key in pairs})} trainings already complete, "
                 f"{sum(not self.over_budget[id(m)] for m, _ in jobs)} to run"
                 + (f", {over} over the budget (INFEASIBLE, not trained)" if over else ""))
        trial = int(existing["trial"].max()) + 1 if not existing.empty and existing["trial"].notna().any() else 0
        for i, (model, seed) in enumerate(jobs, 1):
            if self.over_budget[id(model)]:
                row = self.row(model) | {"seed": seed, "state": "INFEASIBLE", "reason": self.over_budget[id(model)]}
            else:
                row = self.train(model, seed, trial)
            row["trial"] = trial
            results.upsert_trials(self.table, [row])
            acc = "–" if row.get("val_acc") is None else f"{row['val_acc']:.3f}"
            self.say(f"[{i}/{len(jobs)}] {model.strategy} phi={model.phi:g} seed {seed}  {row['resolution']}px  "
                     f"MACs x{model.macs_ratio:.2f}  val {acc}  {row.get('train_seconds') or 0:.0f} s  {row['state']}"
                     + (f" ({row['reason']})" if row["state"] in ("INFEASIBLE", "FAIL") and row.get("reason") else ""))
            trial += 1
        return results.read_trials(self.table)

    def keep_replaced(self, complete: pd.DataFrame, keys: set[tuple]) -> None:
        """The table holds one row per (point, seed, strategy): a model planned anew where an earlier plan
        trained another (scale.resolution_multiple changed) replaces its row.
        Copy the table aside first, so that no completed training is lost."""
        replaced = [r for r in complete.to_dict("records") if row_key(r)[:3] in keys]
        if replaced:
            aside = results.copy_aside(self.sweep_dir)
            self.say(f"{len(replaced)} completed training(s) of an earlier plan, of other models at the same "
                     f"strategy and φ, will be replaced in {self.table}: the table as it was is kept in {aside}")

    def points(self) -> set[str]:
        """The point ids of this comparison's rows (a sweep's table may hold other comparisons')."""
        return {self.row(m)["point"] for m in self.models}

    def warn_of_selected_runs(self, complete: pd.DataFrame) -> None:
        """Rows of an earlier comparison (before its seeds started past the search's) that trained
        compound on the seeds the search chose its point on: the report would count them."""
        if complete.empty or not self.search_seeds:
            return
        selected = complete[(complete["strategy"] == "compound") & complete["point"].isin(self.points())
                            & complete["seed"].isin(self.search_seeds)]
        if not selected.empty:
            seeds = ", ".join(str(int(s)) for s in sorted(selected["seed"].unique()))
            self.say(f"warning: {self.table} has compound rows on seed(s) {seeds}, those the search chose its "
                     "point on; the report counts them, in compound's favour: remove them, or compare into "
                     "another sweep (name=…)")

    def train(self, model: ScaledModel, seed: int, trial: int) -> dict[str, Any]:
        from effscale.loggers import close_loggers, closed_if_stopped, run_settings, trial_loggers
        from effscale.train import fit_or_fail

        row = self.row(model) | {"seed": seed}
        # W&B: one group per sweep, one job type per strategy, so the workspace compares strategies.
        name = f"compare_{trial}_{model.strategy}_phi{model.phi:g}_s{seed}"
        loggers = trial_loggers(self.logger_kind, self.sweep_dir, name, group=str(self.cfg["name"]),
                                job_type=model.strategy, config=row | run_settings(self.cfg, self.recipe),
                                project=self.cfg["logger"].get("project", "effscale"))
        # A stop (Ctrl-C, a UserError that would fail every model alike) writes no row, so the next run
        # trains this model again.
        with closed_if_stopped(loggers):
            metrics = fit_or_fail(model.table, self.data, self.recipe, seed=seed, device=self.device, loggers=loggers,
                                  log=log, label=f"{model.strategy} phi={model.phi:g} seed {seed}")
        metrics = {k: metrics.get(k) for k in ("state", *results.OUTCOME_KEYS)}
        close_loggers(loggers, {k: (metrics | row).get(k) for k in SUMMARY_KEYS} | {"state": metrics["state"]})
        return row | metrics


def _seed_range(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"


def outcome(table: pd.DataFrame, sweep_dir: Path, files: list[Path]) -> str:
    """What a comparison found, for the terminal: accuracy per strategy and φ, compound's margin over
    the best single dimension (and whether it is within noise), and where the report is."""
    from effscale.report import compound_margin, margin_sentences, other_comparisons, strategy_summary

    summary = strategy_summary(table)
    others = other_comparisons(table)
    if summary.empty:
        return " ".join(filter(None, ["nothing to compare: no two strategies or φ have a completed model", others]))
    lines = ["", *([others] if others else []),
             f"{'strategy':<12} {'phi':>4} {'MACs x':>7}  {'seeds':>5}  val acc (mean ± 95 % CI)"]
    for r in summary.itertuples():
        ci = "" if math.isnan(r.ci95) else f" ± {r.ci95:.3f}"
        lines.append(f"{r.strategy:<12} {r.phi:>4g} {r.macs_ratio:>7.2f}  {r.n:>5}  {r.mean:.3f}{ci}")
    margin = compound_margin(summary)
    if not margin.empty:
        lines += ["", margin_sentences(margin)]
    mixed = results.mixed_training(table[results.from_compare(table)])
    if mixed:
        lines.append(mixed)
    report = next((f for f in files if f.name == "report.html"), sweep_dir / "report.html")
    lines += ["", f"table   {results.table_path(sweep_dir)}", f"report  {report} (and report.md, plots/)"]
    return "\n".join(lines)
