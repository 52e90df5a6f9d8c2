"""The α, β, γ search of the paper (section 4, step 1): fix φ = 1, grid-search the coefficients
under α·β²·γ² ≈ 2, train every candidate the budget allows, keep the most accurate.

    grid (scaling.compound_grid) → cost of each candidate measured before any training (measure.py)
    → budget filter → one Optuna trial per (point, seed) → train.fit_candidate → one results row

The study (SQLite in the sweep folder unless `search.storage` names another) is the record of what
ran. Each trial carries its grid point and seed as user attributes, so running the same command again
resumes: a job whose trial finished is never run twice, and a trial left RUNNING by a process that
died is marked FAIL (stale) and its job runs again. The results table is rebuilt from the study on
every start and updated after every trial.

Rounding makes neighbouring grid points build the same network: ⌈repeats·α⌉ gives α = 1.1 and 1.2
the same depth, channels round to multiples of 8 and the input size to whole pixels. A point whose
network and input size an earlier feasible point already has is not trained again; its trial records
that point's result with `same_as` naming it (the same network, seed and data train identically).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from effscale import results
from effscale.budget import (DEVICE_BOUNDS, DEVICE_COSTS, bounds_device_costs, budget_terms, check_baseline_budget,
                             measure_options, over_budget)
from effscale.claims import claim, holders, owner
from effscale.errors import UserError
from effscale.files import exclusive, first_new_folder, log_to, make_sweep_folder, remove_created
from effscale.liveness import HEARTBEAT_S, fail_stale_trials, heartbeat, this_process
from effscale.measure import Measurement, architecture_key, measure_table, measure_tables
from effscale.models import build_model
from effscale.scaling import ScalingError, compound_grid, compound_multipliers, constraint_value, scale_stage_table
from effscale.stops import interrupts_deferred, stop_reason
from effscale.storages import open_storage, storage_file, without_password

log = logging.getLogger("effscale.search")
STRATEGY = "compound"
BASELINE_KEY = "baseline"  # the baseline's own costs in a sweep's recorded device costs


# --- candidates and the budget --------------------------------------------------------------------


@dataclass
class Candidate:
    """One (α, β, γ) at φ: its scaled stage table, its measured cost and, when it breaks the budget, why."""

    alpha: float
    beta: float
    gamma: float
    phi: float
    table: dict[str, Any]
    cost: Measurement | None = None
    macs_ratio: float = float("nan")
    reasons: list[str] = field(default_factory=list)
    # Optuna's constraint convention: one value per budget, feasible when every value is <= 0.
    constraints: dict[str, float] = field(default_factory=dict)
    # The earlier feasible point that builds the same network at the same input size: its result is this one's.
    same_as: str | None = None

    @property
    def point(self) -> str:
        """A stable id of the grid point, e.g. 'a1.2_b1.1_g1.1736'."""
        return point_id(self.alpha, self.beta, self.gamma)

    @property
    def network(self) -> str:
        """The first feasible point that builds this candidate's network: the same for all its repeats."""
        return self.same_as or self.point

    @property
    def feasible(self) -> bool:
        return not self.reasons


def point_id(alpha: float, beta: float, gamma: float) -> str:
    return f"a{alpha:g}_b{beta:g}_g{gamma:g}"


def compound_candidates(baseline: dict[str, Any], grid: dict[str, Any], phi: float,
                        resolution_multiple: int = 1) -> list[Candidate]:
    """Every grid point with α·β²·γ² ≈ 2 (paper eq. 3), as a stage table scaled by α^φ, β^φ, γ^φ."""
    try:
        points = compound_grid(tuple(grid["alpha"]), tuple(grid["beta"]), step=float(grid["step"]),
                               tolerance=float(grid.get("tolerance", 0.05)),
                               gamma_values=grid.get("gamma_values"), gamma_multiple=grid.get("gamma_multiple"))
        return [Candidate(p.alpha, p.beta, p.gamma, phi,
                          scale_stage_table(baseline, compound_multipliers(p.alpha, p.beta, p.gamma, phi),
                                            resolution_multiple))
                for p in points]
    except ScalingError as exc:
        raise UserError(f"search.grid: {exc}") from None


def judge(candidate: Candidate, cost: Measurement, base: Measurement, budget: dict[str, Any]) -> None:
    """Record the candidate's cost and whether it fits: MACs ratio within `macs_tolerance` of 2^φ
    (paper section 3.3: FLOPs grow by about 2^φ), and every other budget that is set. A null
    `macs_tolerance` leaves measured MACs unbounded: the grid's α·β²·γ² ≈ 2 is then the only FLOPs
    constraint, as in the paper, whose own α = 1.2, β = 1.1 measures 2.59× B0 at 224 px."""
    candidate.cost = cost
    candidate.macs_ratio = cost.macs / base.macs
    if budget["macs_tolerance"] is not None:
        target, tolerance = 2.0 ** candidate.phi, float(budget["macs_tolerance"])
        off = abs(candidate.macs_ratio / target - 1)
        candidate.constraints["macs_ratio"] = off - tolerance
        if off > tolerance:
            candidate.reasons.append(f"MACs ratio {candidate.macs_ratio:.2f} is outside {target:g} "
                                     f"± {percent(tolerance)}")
    for key, value, _unit in budget_terms(cost, budget):
        candidate.constraints[key] = value - budget[key]
    candidate.reasons += over_budget(cost, budget)


# --- storage and study ----------------------------------------------------------------------------


@contextmanager
def _one_at_a_time(sqlite: Path | None) -> Iterator[None]:
    """The block run by one process at a time among those opening the SQLite file `sqlite` (None: no
    lock). Searches started together on a new sweep folder would each create the study's tables, and
    Optuna's schema stamp refuses all but one of them midway."""
    if sqlite is None or not sqlite.parent.is_dir():
        yield
        return
    with exclusive(sqlite):  # an empty file is an empty SQLite database
        yield


def _require_optuna_or_empty(sqlite: Path | None) -> None:
    """A SQLite file that holds tables, none of them Optuna's, is another program's database: Optuna would
    add its own tables to it."""
    if sqlite is None or not sqlite.is_file() or sqlite.stat().st_size == 0:
        return
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{sqlite}?mode=ro", uri=True)) as db:
            tables = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.Error:
        return  # not SQLite at all: opening it as a study says so
    if tables and "studies" not in tables:
        raise UserError(f"{sqlite}: a SQLite database of something else (tables {', '.join(tables[:5])}); "
                        "search.storage takes a new file or one that holds Optuna studies")


class FeasibleGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler over the feasible points, for a search that walks the grid itself.

    The search creates each (point, seed)'s trial with its point fixed (`Search.start_trial`), in
    grid order, and again after a crash, so the sampler never picks: it records which grid cell each
    trial is (`grid_id`, as its own trials carry, so `is_exhausted` and the dashboard read the study
    as a grid search) and never stops the study (GridSampler calls `Study.stop`, which exists only
    inside `Study.optimize`, not ask-and-tell).
    """

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        point = trial.system_attrs.get("fixed_params", {}).get("point")
        if point is not None and "grid_id" not in trial.system_attrs and (point,) in self._all_grids:
            study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
            study._storage.set_trial_system_attr(trial._trial_id, "grid_id", self._all_grids.index((point,)))
            return
        super().before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        pass


def make_sampler(kind: str, points: list[str], seed: int) -> optuna.samplers.BaseSampler:
    if kind == "grid":
        return FeasibleGridSampler({"point": points}, seed=seed)
    if kind == "tpe":
        # TPE reads each trial's constraints (Trial.set_constraint, <= 0 feasible), which `train` records.
        return optuna.samplers.TPESampler(seed=seed)
    raise UserError(f"search.sampler={kind}: expected grid or tpe")


def make_pruner(kind: str, max_epochs: int, reduction_factor: int = 3,
                min_epochs: int = 1) -> optuna.pruners.BasePruner:
    """Optuna's pruner for `search.pruner`; the resource is the epoch. `asha` is asynchronous successive
    halving (Li et al., "A System for Massively Parallel Hyperparameter Tuning", 2020): a trial goes on
    past epoch r, rη, rη², … (r = `min_epochs`) only while it is in the best 1/η of the trials that
    reached that epoch. `hyperband` runs several such brackets with different first epochs, one of them
    never pruning; `median` stops a trial below the median of earlier ones at the same epoch, from epoch r
    on. A later first rung keeps slow starters where a grid's first epochs do not rank its points yet."""
    if kind in (None, "none"):
        return optuna.pruners.NopPruner()
    if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, int) or reduction_factor < 2:
        raise UserError(f"search.reduction_factor: expected an integer of at least 2, got {reduction_factor!r}")
    if isinstance(min_epochs, bool) or not isinstance(min_epochs, int) or min_epochs < 1 \
            or (min_epochs >= max_epochs and min_epochs != 1):
        raise UserError(f"search.min_epochs: expected an integer of at least 1 and below trainer.max_epochs="
                        f"{max_epochs}, got {min_epochs!r}")
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=min_epochs)
    if kind == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=reduction_factor)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=max(1, max_epochs),
                                              reduction_factor=reduction_factor)
    raise UserError(f"search.pruner={kind}: expected none, median, asha or hyperband")


WAIT_S = 5.0  # how often a search waiting for another's training of the same network looks again


# --- rows -----------------------------------------------------------------------------------------

ROW_ATTRS = [c for c in results.COLUMNS if c not in ("trial", "state")]


def candidate_row(c: Candidate, context: dict[str, Any]) -> dict[str, Any]:
    """The columns a candidate has before training: where it is on the grid and what it costs."""
    return {
        "strategy": STRATEGY, "phi": c.phi, "alpha": c.alpha, "beta": c.beta, "gamma": c.gamma,
        "depth_mult": round(c.table["depth_mult"], 6), "width_mult": round(c.table["width_mult"], 6),
        **c.cost.cost_columns(), "macs_ratio": round(c.macs_ratio, 4), "feasible": c.feasible,
        "constraint": round(constraint_value(c.alpha, c.beta, c.gamma), 4), "point": c.point,
        "reason": "; ".join(c.reasons) or None, **context,
    }


def set_aside_trial_logs(sweep_dir: Path) -> tuple[int, Path] | None:
    """Move `logs/trial_N/` of an earlier study to `logs/before-<time>/`: a new study numbers its trials
    from 0 again, and its trial 0's metrics would otherwise continue the old trial 0's file. How many
    folders went, and where; None when there were none."""
    old = sorted((sweep_dir / "logs").glob("trial_*"))
    if not old:
        return None
    aside = sweep_dir / "logs" / f"before-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=True)
    for folder in old:
        folder.rename(aside / folder.name)
    return len(old), aside


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"trial": trial.number, "state": trial.state.name, **{k: attrs.get(k) for k in ROW_ATTRS}}


# --- the search -----------------------------------------------------------------------------------


@dataclass
class Job:
    candidate: Candidate
    seed: int

    @property
    def key(self) -> tuple[str, int]:
        return self.candidate.point, self.seed


class Search:
    """One sweep: its candidates, its study, its data, and the loop that trains what is left."""

    def __init__(self, cfg: dict[str, Any], baseline: dict[str, Any], device: str,
                 say: Callable[[str], None] = print, shared: bool = False) -> None:
        """`shared`: worker jobs (`effscale search -m`) share this search's grid, however many."""
        self.cfg, self.baseline, self.device, self.say = cfg, baseline, device, say
        self.opts, self.budget, self.recipe = cfg["search"], cfg["budget"], dict(cfg["trainer"])
        self.stale_after_s = float(self.opts["stale_after_s"])
        self.retry_below: int | None = None  # set by `open`
        self.new_storage: Path | None = None  # set by `open`: a journal or SQLite file (or its folder) it creates
        self.created = False  # set by `open`: whether this run created the study
        self.working: optuna.Trial | None = None  # the trial this process has started and not yet recorded
        self.device_costs_from = device  # the device that measured latency and peak memory (`open`)
        self.device_costs_to_record: dict[str, Any] | None = None  # `adopt_device_costs`, recorded by `open`
        self.seed = int(cfg["seed"])
        self.sweep_dir = Path(cfg["out"]) / str(cfg["name"])
        self.context = {"baseline": baseline["name"], "dataset": cfg["data"]["name"]}
        self.logger_kind = cfg["logger"]["name"]
        self.pruner()  # a wrong pruner setting fails here, before anything runs
        make_sampler(self.opts["sampler"], [], self.seed)
        if self.opts["sampler"] != "grid" and (shared or int(self.opts.get("workers") or 1) > 1):
            # TPE asks for one point at a time, from the trials before it: nothing workers can split.
            raise UserError(f"search.sampler={self.opts['sampler']}: workers share a grid search only "
                            "(search.sampler=grid); run TPE as `effscale search` with search.workers=1, without -m")
        from effscale.train import trial_devices

        if trial_devices(self.recipe, device) > 1 and self.opts.get("pruner") not in (None, "none"):
            raise UserError(f"search.pruner={self.opts['pruner']} needs trainer.devices=1: a trial on several "
                            "devices runs in spawned DDP ranks and reports its epochs only when it ends")

    def pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.opts.get("pruner"), int(self.recipe["max_epochs"]),
                           self.opts.get("reduction_factor", 3), self.opts.get("min_epochs", 1))

    # Candidates: everything here runs before anything is written.
    def plan(self) -> list[Candidate]:
        from effscale.data import build_datamodule
        from effscale.train import set_threads

        phi = float(self.opts["phi"])
        multiple = int((self.cfg.get("scale") or {}).get("resolution_multiple") or 1)
        self.candidates = compound_candidates(self.baseline, self.opts["grid"], phi, multiple)
        set_threads(self.recipe.get("threads"))
        data_cfg = self.cfg["data"]
        self.data = build_datamodule(data_cfg, int(self.baseline["resolution"]), int(data_cfg["batch_size"]),
                                     self.recipe.get("num_workers"), self.seed)
        classes, channels = self.data.num_classes, self.data.in_channels

        def build(table: dict[str, Any]) -> Any:
            return build_model(table, classes, channels)

        options = measure_options(self.cfg, self.device, channels)
        base = measure_table(self.baseline, build, **options)
        # Bounds on device costs are checked once `open` has the sweep's recorded costs.
        check_baseline_budget(base, {k: v for k, v in self.budget.items()
                                     if not (self.device_budget and k in DEVICE_BOUNDS)})
        # One model per architecture, one count per (architecture, input size): grid points often share them.
        costs = measure_tables([c.table for c in self.candidates], build, **options)
        self.base_cost = base
        self.by_point = {c.point: c for c in self.candidates}
        self._judge(costs)
        if not self.device_budget:  # else once `open` has the sweep's recorded device costs
            self._require_feasible()
        self.data.read()  # once the budget leaves something to train: a folder of images may take minutes
        return self.candidates

    @property
    def device_budget(self) -> bool:
        return bounds_device_costs(self.budget)

    def _judge(self, costs: list[Measurement]) -> None:
        """Decide which candidates fit the budget at these costs, and which repeat another's network."""
        for candidate, cost in zip(self.candidates, costs):
            candidate.reasons, candidate.constraints = [], {}
            judge(candidate, cost, self.base_cost, self.budget)
        self.feasible = [c for c in self.candidates if c.feasible]
        first: dict[tuple[str, int], str] = {}
        for c in self.feasible:
            same = first.setdefault((architecture_key(c.table), int(c.table["resolution"])), c.point)
            c.same_as = same if same != c.point else None

    def _require_feasible(self) -> None:
        if not self.feasible:
            phi = float(self.opts["phi"])
            nearest = min(self.candidates, key=lambda c: abs(c.macs_ratio / 2**phi - 1))
            raise UserError(f"budget: none of the {len(self.candidates)} grid points fits "
                            f"(nearest: {nearest.point}, {'; '.join(nearest.reasons)})")

    def adopt_device_costs(self) -> None:
        """Latency and peak memory measured on a device differ from one process, machine and run to
        the next, and the workers of one sweep must agree on its feasible points. The process that
        creates the study records them, the baseline's too (`device_costs`); every later one (other
        workers, a resumed sweep) judges the budget with those rather than its own, and records what
        it measured that the record lacks (a bound added on resume), once this run is not refused."""
        recorded = self.study.user_attrs.get("device_costs") or {"device": self.device, "costs": {}}
        measured = {c.point: c.cost for c in self.candidates} | {BASELINE_KEY: self.base_cost}
        costs = {}
        for key, cost in measured.items():
            before = recorded["costs"].get(key) or {}
            costs[key] = {k: before[k] if before.get(k) is not None else getattr(cost, k) for k in DEVICE_COSTS}
        if costs != {key: recorded["costs"].get(key) for key in costs}:
            self.device_costs_to_record = {"device": recorded["device"], "costs": recorded["costs"] | costs}
        self.base_cost = replace(self.base_cost, **costs[BASELINE_KEY])
        check_baseline_budget(self.base_cost, self.budget)
        self._judge([replace(c.cost, **costs[c.point]) for c in self.candidates])
        self.study.sampler = make_sampler(self.opts["sampler"], self._points(), self.seed)
        self.device_costs_from = recorded["device"]

    def describe_plan(self) -> str:
        phi, tolerance = float(self.opts["phi"]), self.budget["macs_tolerance"]
        bounds = [f"MACs ratio {2 ** phi:g} ± {percent(tolerance)}" if tolerance is not None
                  else "MACs unbounded: alpha*beta^2*gamma^2 of the grid only"]
        bounds += [f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:,g}"  # max_params=1,300,000, not 1.3e+06
                   for k, v in self.budget.items() if k.startswith("max_") and v is not None]
        if self.device_budget:
            bounds.append(f"latency and peak memory as measured on {self.device_costs_from}")
        copies = sum(1 for c in self.feasible if c.same_as)
        repeat = f", {copies} of them the same network as another (trained once)" if copies else ""
        return (f"{self.context['baseline']} on {self.context['dataset']} at {self.baseline['resolution']} px: "
                f"{len(self.candidates)} grid points at phi={phi:g}, {len(self.feasible)} within budget "
                f"({', '.join(bounds)}){repeat}")

    def open(self, new_launch: bool = True) -> optuna.Study:
        """Create or load the sweep's study and bring trials.csv up to date with it. `new_launch`:
        this process starts a launch (a `search` command), not one of its workers."""
        # A table that cannot be read (cut off, edited, another program's): refused before a study is made.
        results.read_trials(self.sweep_dir)
        new = make_sweep_folder(self.sweep_dir, self.cfg["out"])  # removed again if this run is refused
        try:
            return self._open(new, new_launch)
        except KeyboardInterrupt:
            self._undo_interrupted_open(new)
            raise

    def _open(self, new: Path | None, new_launch: bool) -> optuna.Study:
        # One run at a time creates or loads the study, checks it against the record and leaves its context
        # there: a run starting beside another never sees a study half set up, and never takes it for its own.
        with exclusive(self.sweep_dir / ".open.lock"):
            self.new_storage = self._make_storage_file(storage_file(self.opts.get("storage")))
            self.study, created = self._create_study(new)
            self.created = created
            self._check_against_record(new, created, new_launch)
            if self.device_costs_to_record:
                self.study.set_user_attr("device_costs", self.device_costs_to_record)
            if created:
                self._set_aside_earlier_study()
            for key, value in {**self.context, "strategy": STRATEGY, "phi": float(self.opts["phi"]),
                               "points": self._points()}.items():
                self.study.set_user_attr(key, value)
        log_to(log, self.sweep_dir / "search.log")
        stale = fail_stale_trials(self.study, self.stale_after_s)
        if stale:
            self.say(f"{stale} trial(s) left unfinished by an earlier run: marked FAIL (stale), will run again")
        self._start_launch(new_launch)
        self.table = results.table_path(self.sweep_dir)
        # A point over the budget is one row, whatever the seed (it trains with none): a run with another
        # `seed` keeps the seed of the row an earlier run wrote.
        table = results.read_trials(self.table)
        over = table[(table["state"] == "INFEASIBLE") & (table["strategy"] == STRATEGY)] if len(table) else table
        seeds = dict(zip(over["point"], over["seed"])) if len(over) else {}
        rows = [candidate_row(c, self.context) | {"state": "INFEASIBLE", "seed": int(seeds.get(c.point, self.seed))}
                for c in self.candidates if not c.feasible]
        rows += [trial_row(t) for t in self._finished().values()]
        results.upsert_trials(self.table, rows)
        return self.study

    def _undo_interrupted_open(self, new: Path | None) -> None:
        """A stop while the sweep folder is being set up: a folder this run made, and a study it
        created, are removed again while no trial is in the study, so that a Ctrl-C in the first
        second leaves nothing half made. A folder that was there stays, resumable as it was."""
        study = getattr(self, "study", None)
        if new is None or (study is not None and study.get_trials(deepcopy=False)):
            return  # the folder was there before, or another run already trains in it
        if study is not None and self.created and self.opts.get("storage") and self.new_storage is None:
            with contextlib.suppress(Exception):  # a shared storage: the study is this run's alone, not yet used
                optuna.delete_study(study_name=study.study_name, storage=study._storage)
        self.remove_created(new)

    def _set_aside_earlier_study(self) -> None:
        """For a study this run created: the rows and logs already in the sweep folder are an earlier
        study's (a copied folder, a deleted or moved study), kept beside it and not ranked with this one's."""
        moved = results.set_aside_search_rows(self.sweep_dir)
        if moved:
            self.say(f"{results.table_path(self.sweep_dir)} held {moved[0]} search rows the new study did not "
                     f"train (a copied folder, or a deleted study): moved to {moved[1]}, not ranked with this "
                     "study's")
        logs = set_aside_trial_logs(self.sweep_dir)
        if logs:
            self.say(f"the logs of {logs[0]} trial(s) of the earlier study: moved to {logs[1]}")

    @staticmethod
    def _make_storage_file(file: Path | None) -> Path | None:
        """Create the file of a journal or SQLite storage (search.storage=journal://… or sqlite:///…) that
        is not there yet, with its folders (an empty file is an empty SQLite database): the first of them
        that was new, removed again if this run is refused; None when the file was there, or another
        search made it meanwhile."""
        new = first_new_folder(file) if file else None
        if new is None:
            return None
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.open("x").close()
        except OSError:
            return None  # another search's now, or not to be created: opening the storage says why
        return new

    def _create_study(self, new: Path | None) -> tuple[optuna.Study, bool]:
        """The sweep's study, created or loaded, and whether this run created it: the storage decides (a
        study's name is unique there), so of two runs starting together one alone is its creator. A
        storage that cannot be opened is one error."""
        from sqlalchemy.exc import OperationalError, SQLAlchemyError

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = self.opts.get("storage")
        points = [c.point for c in self.feasible]
        sqlite = self.sweep_dir / "study.db" if not url else storage_file(url) if url.startswith("sqlite") else None
        try:
            _require_optuna_or_empty(sqlite)
        except UserError:
            self.remove_created(new)
            raise
        attempts = 3
        while True:
            try:
                with _one_at_a_time(sqlite):
                    storage = open_storage(url, self.sweep_dir)
                    made = {"study_name": self._study_name(url, storage), "storage": storage, "pruner": self.pruner(),
                            "sampler": make_sampler(self.opts["sampler"], points, self.seed)}
                    try:
                        return optuna.create_study(direction="maximize", **made), True
                    except optuna.exceptions.DuplicatedStudyError:
                        return optuna.load_study(**made), False
            except (ImportError, ValueError, OSError, SQLAlchemyError) as exc:
                attempts -= 1
                # Two searches creating one SQLite study at once: the other's tables appear midway.
                if attempts and isinstance(exc, OperationalError) and "already exists" in str(exc):
                    time.sleep(0.5)
                    continue
                self.remove_created(new)
                what = f"search.storage={without_password(url)}" if url else f"{self.sweep_dir / 'study.db'}"
                reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
                raise UserError(f"{what}: cannot open the study ({reason[:200]})") from None

    def _study_name(self, url: str | None, storage: Any) -> str:
        """`name`, or the one study the folder's own study.db holds under another name: the folder was
        renamed or copied with its study, whose finished trials are this sweep's."""
        name = str(self.cfg["name"])
        if url:  # a shared storage holds other sweeps' studies
            return name
        held = optuna.get_all_study_names(storage)
        if len(held) == 1 and held[0] != name:
            self.say(f"{self.sweep_dir / 'study.db'} holds study {held[0]!r} (a folder renamed or copied with "
                     "its study): resuming it")
            return held[0]
        return name

    def _check_against_record(self, new: Path | None, created: bool, new_launch: bool = True) -> None:
        """What the study and the sweep folder recorded must agree with this run: the device costs a
        budget is judged on, the feasible points, the settings the trials were trained with. A study
        this run `created` and then refused is deleted again; one it did not create, never. Only a new
        launch may record other settings, and only while no trial is finished or being trained: a
        worker of an earlier launch, or a run beside another, must train with the recorded ones."""
        try:
            if self.device_budget:
                self.adopt_device_costs()
                self._require_feasible()
            self.check_same_points()
            kept = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
            trained = any(t.state in kept and not t.user_attrs.get("stale") and t.user_attrs.get("repeat_of") is None
                          for t in self.study.get_trials(deepcopy=False))
            results.check_settings(self.sweep_dir, "search", results.trained_with(
                self.baseline, self.cfg["data"], self.data.class_names, self.recipe, phi=float(self.opts["phi"])),
                trained=trained, worker=not new_launch)
        except UserError:
            if created:
                optuna.delete_study(study_name=self.study.study_name, storage=self.study._storage)
                self.remove_created(new)
            raise

    def remove_created(self, new: Path | None) -> None:
        """Undo what a refused run created: the sweep folder (`files.remove_created`), and a journal or
        SQLite file, with the folders made for it, that was not there before."""
        remove_created(new, self.sweep_dir)
        file = storage_file(self.opts.get("storage"))
        if file is not None and self.new_storage == file:
            file.unlink(missing_ok=True)
        elif file is not None and self.new_storage is not None:
            remove_created(self.new_storage, file.parent)

    def _start_launch(self, new_launch: bool) -> None:
        """Record where this launch's trials begin (the workers of one launch read it, however late each
        starts). With search.retry_failed, failures of earlier launches run once more; this launch's
        stand. A worker started on its own, with no launch recorded, starts one."""
        first = max((t._trial_id for t in self.study.get_trials(deepcopy=False)), default=-1) + 1
        if new_launch:
            self.study.set_user_attr("launch_first_trial_id", first)
        self.retry_below = (self.study.user_attrs.get("launch_first_trial_id", first)
                            if self.opts.get("retry_failed") else None)

    def check_same_points(self) -> None:
        """A study's trials share one `point` parameter over the feasible set (Optuna refuses to change
        a categorical parameter's choices), so a sweep resumes only with the points it was planned with."""
        points = self._points()
        before = self.study.user_attrs.get("points")  # as the run that set the study up recorded them
        if before is None:  # a study set up before they were recorded: its first trial's choices
            before = next((list(t.distributions["point"].choices) for t in self.study.get_trials(deepcopy=False)
                           if "point" in t.distributions), None)
        if before is not None and list(before) != points:
            new, gone = len(set(points) - set(before)), len(set(before) - set(points))
            raise UserError(
                f"{self.sweep_dir}: its study has {len(before)} points within the budget, this run "
                f"{len(points)} ({new} new, {gone} gone, from search.grid, budget or the data's resolution); "
                "run it with those settings, or start another sweep with name=…")

    def _finished(self) -> dict[tuple[str, int], FrozenTrial]:
        """The trial that settled each (point, seed): the latest finished one, leaving out stale and
        interrupted trials (their jobs run again) and, with `search.retry_failed`, failures of
        earlier launches."""
        held = holders(self.study.get_trials(deepcopy=False))
        owners = {key: owner(trials, self.retry_below) for key, trials in held.items()}
        return {key: t for key, t in owners.items() if t is not None and t.state.is_finished()}

    def _trained_points(self) -> set[str]:
        """Points settled with the base seed by training their own network (not by a `same_as` copy):
        what TPE's `search.n_trials` counts."""
        return {p for (p, s), t in self._finished().items() if s == self.seed and not t.user_attrs.get("same_as")}

    def running_elsewhere(self) -> str | None:
        """After `run`: what other processes still train (the search ranked without them), or None."""
        running = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if "point" in t.user_attrs]
        if not running:
            return None
        where = sorted({f"{t.user_attrs.get('host', '?')} pid {t.user_attrs.get('pid', '?')}" for t in running})
        return (f"{len(running)} trial(s) still running in another process ({', '.join(where[:3])}"
                f"{', …' if len(where) > 3 else ''}), left out of the ranking above; the same command takes "
                "their results in once they finish, or trains their points again once their process is gone "
                f"(search.stale_after_s={self.stale_after_s:g} s without a heartbeat)")

    def trained_elsewhere_now(self, job: Job) -> bool:
        """Whether `job`'s point repeats the network of a point that another search on the study is
        training with the same seed at this moment (a point's copies come after it in this one's jobs)."""
        return job.candidate.same_as is not None and (job.candidate.same_as, job.seed) in self._running()

    def _running(self) -> set[tuple[str, int]]:
        return {(t.user_attrs["point"], int(t.user_attrs["seed"]))
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if "point" in t.user_attrs}

    # Jobs: which (point, seed) pairs this sweep trains.
    def first_jobs(self) -> list[Job]:
        """Every feasible point with the base seed, points that repeat another's network last (their
        trials only record that one's result)."""
        if self.opts["sampler"] == "grid":
            return [Job(c, self.seed) for c in sorted(self.feasible, key=lambda c: c.same_as is not None)]
        return []  # TPE chooses its points one trial at a time, in `run_tpe`

    def seed_jobs(self) -> list[Job]:
        """Extra seeds for the best `top_k` points, so that the winner is not decided by one seed's luck.
        Points are ranked by their mean over the seeds they have, so once the leaders' extra seeds
        pull them down, a point now ahead on its one seed is trained again too: called after the jobs
        it returned are settled, it returns those of the points that moved up, and nothing once the
        best `top_k` by mean have every seed."""
        extra, top_k = int(self.opts.get("extra_seeds", 0)), int(self.opts.get("top_k", 0))
        if not extra or not top_k:
            return []
        finished = self._finished()
        values: dict[str, list[float]] = {}
        for (point, seed), t in finished.items():  # the best networks, each once (not their same_as copies)
            if t.state == TrialState.COMPLETE and point in self.by_point and not t.user_attrs.get("same_as"):
                values.setdefault(point, []).append(t.value)
        points = [self.by_point[p] for p in values if (p, self.seed) in finished]
        means = pd.DataFrame([{"point": c.point, "alpha": c.alpha, "beta": c.beta, "macs_ratio": c.macs_ratio,
                               "val_acc": statistics.fmean(values[c.point])} for c in points])
        ranked = list(results.best_first(means)["point"]) if points else []  # the report's order, ties too
        seeds = range(self.seed + 1, self.seed + extra + 1)
        return [Job(self.by_point[p], s) for p in ranked[:top_k] for s in seeds if (p, s) not in finished]

    def run_seed_rounds(self, run: Callable[[list[Job]], None]) -> None:
        """`run` the extra seeds of `seed_jobs` until the best points by mean have all of theirs; stop
        also when a round settles nothing (another process is training those points)."""
        previous: list[tuple[str, int]] = []
        while jobs := self.seed_jobs():
            if [j.key for j in jobs] == previous:
                return
            previous = [j.key for j in jobs]
            run(jobs)

    def failed_points(self) -> int:
        """How many (point, seed) a FAILed trial settled: they stay failed unless search.retry_failed."""
        return sum(t.state == TrialState.FAIL for t in self._finished().values())

    def counts(self) -> tuple[int, int]:
        """(trials settled, trials this sweep will have): the grid points (TPE: `n_trials` of them)
        with the base seed, then `extra_seeds` more for each of the best `top_k`. `total` foresees the
        first round of extra seeds only: a point that moves up among the best after it (`seed_jobs`) is
        trained beyond it, and once trained is counted in both."""
        finished = self._finished()
        if self.opts["sampler"] == "tpe":
            first = distinct = self.tpe_trials  # TPE's n_trials counts trainings
        else:
            first = len(self.feasible)
            distinct = first - sum(1 for c in self.feasible if c.same_as)
        extra = min(int(self.opts.get("top_k", 0)), distinct) * int(self.opts.get("extra_seeds", 0))
        feasible = {c.point for c in self.feasible}
        if self.opts["sampler"] == "tpe":
            first_done = len(self._trained_points() & feasible)
        else:
            first_done = sum(1 for p, s in finished if s == self.seed and p in feasible)
        extra_done = sum(1 for p, s in finished if s != self.seed and p in feasible)
        return min(first_done, first) + extra_done, first + max(extra, extra_done)

    def settled(self) -> bool:
        """Whether nothing is left to train: every trial `counts` foresees, and the extra seeds of any
        point that moved up among the best."""
        done, total = self.counts()
        return done >= total and not self.seed_jobs()

    def run(self) -> pd.DataFrame:
        with self.abandoned_on_stop():
            if self.opts["sampler"] == "tpe":
                self.run_tpe()
            else:
                self.run_jobs(self.first_jobs())
            self.run_seed_rounds(lambda jobs: self.run_jobs(jobs, label="extra seeds for the best points"))
        return results.read_trials(self.table)

    def run_jobs(self, jobs: list[Job], label: str = "grid points") -> None:

        done, running = self._finished(), self._running()
        todo = [j for j in jobs if j.key not in done and j.key not in running]
        if not todo:
            return
        self.say(f"{label}: {len(todo)} to run")
        for i, job in enumerate(todo, 1):
            while self.trained_elsewhere_now(job):  # then record that training's result, not train it again
                time.sleep(WAIT_S)
                fail_stale_trials(self.study, self.stale_after_s)  # unless the search training it has died
            if job.key in self._finished() or job.key in self._running():
                continue  # another worker on the same study took it meanwhile
            # Claimed as workers claim: another search on the same study may have just started it.
            trial = self.begin(lambda: claim(self, job, self.retry_below))
            if trial is not None:
                self.train(trial, job, f"[{i}/{len(todo)}]")

    @property
    def tpe_trials(self) -> int:
        """How many points TPE trains: `search.n_trials`, by default half the feasible ones."""
        return min(int(self.opts.get("n_trials") or max(1, len(self.feasible) // 2)), len(self.feasible))

    def run_tpe(self) -> None:
        """TPE proposes points from the feasible set; a point it proposes again is answered from the
        study (never retrained) and does not count towards `search.n_trials`."""
        n_trials = self.tpe_trials
        trained = self._trained_points()
        for _ in range(20 * n_trials):
            if len(trained) >= n_trials:
                break
            trial = self.begin(self._ask)
            with interrupts_deferred():
                point = trial.suggest_categorical("point", self._points())
            earlier = self._finished().get((point, self.seed))
            if earlier is not None:
                with interrupts_deferred():
                    trial.set_user_attr("repeat_of", earlier.number)
                    if earlier.state == TrialState.COMPLETE:
                        self.study.tell(trial, earlier.value)
                    else:
                        self.study.tell(trial, state=earlier.state)
                    self.working = None
                continue
            # A point that repeats a trained network costs nothing and is not counted.
            if self.train(trial, Job(self.by_point[point], self.seed), f"[{len(trained) + 1}/{n_trials}]"):
                trained.add(point)

    def _ask(self) -> optuna.Trial:
        trial = self.study.ask()
        for key, value in {"seed": self.seed, **this_process(), "heartbeat": time.time()}.items():
            trial.set_user_attr(key, value)
        return trial

    def begin(self, create: Callable[[], optuna.Trial | None]) -> optuna.Trial | None:
        """The trial `create` makes (None when it makes none), written whole, and from then on the one
        this process works on (`working`) until it is recorded: a Ctrl-C meanwhile is held off until
        `working` is set, so that `abandoned_on_stop` finds it."""
        with interrupts_deferred():
            self.working = create()
        return self.working

    @contextmanager
    def abandoned_on_stop(self) -> Iterator[None]:
        """A stop anywhere in the block (`stop_reason`: Ctrl-C, SIGTERM, the cluster ending the job)
        leaves the trial this process works on stale (FAIL, run again next launch), not RUNNING."""
        try:
            yield
        except BaseException as exc:
            reason = stop_reason(exc)
            if reason is not None and self.working is not None:
                self.abandon(self.working, reason)
            raise

    def _points(self) -> list[str]:
        return [c.point for c in self.feasible]

    def trial_attrs(self, job: Job) -> dict[str, Any]:
        """The user attributes a trial of `job` starts with: its results row so far, and who runs it
        (so that a crash at any moment leaves it recognisably stale)."""
        return candidate_row(job.candidate, self.context) | {
            "seed": job.seed, "epochs": None, **this_process(), "heartbeat": time.time()}

    def start_trial(self, job: Job, **attrs: Any) -> optuna.Trial:
        """A RUNNING trial of `job`, created in one write with its point and user attributes (`attrs`
        added). Not `enqueue_trial` then `ask`: `ask` takes the study's oldest waiting trial, which can
        be another search's, enqueued a moment before."""
        point = job.candidate.point
        template = optuna.trial.create_trial(
            state=TrialState.RUNNING, params={"point": point},
            distributions={"point": optuna.distributions.CategoricalDistribution(self._points())},
            user_attrs=self.trial_attrs(job) | attrs, system_attrs={"fixed_params": {"point": point}})
        storage = self.study._storage
        trial_id = storage.create_new_trial(self.study._study_id, template_trial=template)
        self.study.sampler.before_trial(self.study, storage.get_trial(trial_id))  # as `ask` does: its grid cell
        return optuna.trial.Trial(self.study, trial_id)

    def original(self, job: Job) -> FrozenTrial | None:
        """A finished trial that trained `job`'s network with `job`'s seed, under another point."""
        finished, c = self._finished(), job.candidate
        for other in self.feasible:
            if other is c or other.network != c.network:
                continue
            trial = finished.get((other.point, job.seed))
            if trial is not None and not trial.user_attrs.get("same_as"):
                return trial
        return None

    def train(self, trial: optuna.Trial, job: Job, progress: str) -> bool:
        """Train `job` as `trial` and record the result; a point that repeats a network already
        trained with this seed records that trial's result instead. Whether it trained. Called inside
        `abandoned_on_stop`, so that a Ctrl-C anywhere in it leaves the trial stale, not RUNNING."""
        c = job.candidate
        attrs, written = self.trial_attrs(job), trial.user_attrs
        with interrupts_deferred():
            for key, value in attrs.items():
                # A trial created with its attributes (grid and workers) has them already: one storage
                # transaction then, rather than one per attribute here.
                if key not in written or written[key] != value:
                    trial.set_user_attr(key, value)
            for key, value in c.constraints.items():
                trial.set_constraint(key, value)
        original = self.original(job)
        if original is not None:
            # Nothing trains, so nothing to time: train_seconds 0, and epochs those of the result.
            summary = {k: original.user_attrs.get(k) for k in results.OUTCOME_KEYS}
            summary.update(train_seconds=0.0, same_as=original.user_attrs["point"])
            self.record(trial, summary, original.state.name, progress)
            return False
        self.fit(trial, job, attrs, progress)
        return True

    def fit(self, trial: optuna.Trial, job: Job, attrs: dict[str, Any], progress: str) -> None:
        from effscale.loggers import close_loggers, closed_if_stopped, run_settings, trial_loggers
        from effscale.train import fit_or_fail

        c, seed = job.candidate, job.seed
        # An extra seed is trained in full: it exists to average a leading point, and a pruned one would
        # leave that point ranked on its one lucky seed (seed_jobs averages COMPLETE trials only).
        pruning = self.opts.get("pruner") not in (None, "none") and seed == self.seed
        last = int(self.recipe["max_epochs"])

        def report(epoch: int, val_acc: float) -> bool:
            with interrupts_deferred():
                trial.report(val_acc, epoch)
                trial.set_user_attr("heartbeat", time.time())
                # After the last epoch there is nothing left to save: a trained point is COMPLETE and ranked.
                return pruning and epoch < last and trial.should_prune()

        name = f"trial_{trial.number}"
        config = {k: attrs[k] for k in ("point", "alpha", "beta", "gamma", "phi", "depth_mult", "width_mult",
                                        "resolution", "params", "macs", "macs_ratio", "seed", "baseline", "dataset")}
        config |= run_settings(self.cfg, self.recipe)
        loggers = trial_loggers(self.logger_kind, self.sweep_dir, name, group=str(self.cfg["name"]),
                                job_type=STRATEGY, config=config, project=self.cfg["logger"].get("project", "effscale"))
        # Several heartbeats fit into search.stale_after_s, so that one late write is not a death.
        every_s = min(HEARTBEAT_S, self.stale_after_s / 4)
        # A stop propagates, and `abandoned_on_stop` marks the trial stale: the next launch runs it again.
        with closed_if_stopped(loggers), heartbeat(self.study, trial._trial_id, every_s):
            metrics = fit_or_fail(c.table, self.data, self.recipe, seed=seed, device=self.device, loggers=loggers,
                                  report=report, log=log, label=f"trial {trial.number} ({c.point}, seed {seed})")
        summary = {k: metrics.get(k) for k in results.OUTCOME_KEYS}
        self.record(trial, summary, metrics["state"], progress)  # first: a Ctrl-C while closing keeps it
        close_loggers(loggers, summary | {"macs": c.cost.macs, "params": c.cost.params, "state": metrics["state"]})

    def abandon(self, trial: optuna.Trial, reason: str) -> None:
        """Mark a trial this process stops working on FAIL and stale, so that the next launch runs its
        point again; nothing if it is finished already."""
        with interrupts_deferred():
            try:
                trial.set_user_attr("stale", True)
                trial.set_user_attr("reason", reason)
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # finished, or another worker took it over as stale meanwhile: it runs again there
            except optuna.exceptions.StorageInternalError:
                # Still RUNNING under this process's id, so the next launch finds it stale all the same.
                log.warning("trial %s: could not mark it stale; the next launch will", trial.number, exc_info=True)
            self.working = None

    def record(self, trial: optuna.Trial, summary: dict[str, Any], state_name: str, progress: str) -> None:
        """Tell the study how `trial` ended and write its results row."""
        with interrupts_deferred():  # a finished trial is recorded whole before a Ctrl-C ends the sweep
            state = TrialState[state_name]
            try:
                for key, value in summary.items():
                    trial.set_user_attr(key, value)
                frozen = self.study.tell(trial, summary["val_acc"] if state == TrialState.COMPLETE else None,
                                         state=state, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                frozen = None
            self.working = None
            if frozen is None or frozen.user_attrs.get("stale"):
                # Another worker found this trial abandoned (no heartbeat for search.stale_after_s: a
                # hung process, or a storage it could not reach) and marked it stale; the point is
                # that worker's now, and its row will be written once it has trained it.
                self.say(f"{progress} trial {trial.number} ({summary.get('reason') or state_name}) was "
                         "marked stale by another worker meanwhile; its point trains there again")
                return
            results.upsert_trials(self.table, [trial_row(frozen)])
        self.say(trial_line(progress, frozen))


def trial_line(progress: str, t: FrozenTrial) -> str:
    """The one line printed per finished trial."""
    a = t.user_attrs
    acc = f"val {a['val_acc']:.3f}" if a.get("val_acc") is not None else "val –"
    text = (f"{progress} α={a['alpha']:.2f} β={a['beta']:.2f} γ={a['gamma']:.3f} seed {a['seed']}  "
            f"{a['resolution']}px  MACs ×{a['macs_ratio']:.2f}  {acc}  {a.get('train_seconds') or 0:.0f} s  "
            f"{t.state.name}")
    if a.get("same_as"):
        return text + f" (same network as {a['same_as']}: its result, not trained again)"
    return text + (f" ({a['reason']})" if a.get("reason") and t.state != TrialState.COMPLETE else "")


def outcome(table: pd.DataFrame, sweep_dir: Path, logger_kind: str) -> str:
    """What a search found, for the terminal: the best α, β, γ, whether its lead is more than seed
    noise, the trained points by mean validation accuracy, and where the files are."""
    table = table[(table["strategy"] == STRATEGY) & ~results.from_compare(table)]  # `compare` may share the folder
    summary = results.seed_summary(table)
    counts = table["state"].value_counts()
    lines = ["", "trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in results.STATES)]
    if summary.empty:
        return "\n".join(lines + ["no trial completed: nothing to rank"])
    best = summary.iloc[0]
    spread = "" if pd.isna(best["val_std"]) else f" ± {best['val_std']:.3f} (std)"  # the report's ± is a 95 % CI
    lines.append(f"best: alpha={best['alpha']:g} beta={best['beta']:g} gamma={best['gamma']:g} "
                 f"({int(best['resolution'])} px, MACs ×{best['macs_ratio']:.2f}): "
                 f"val acc {best['val_acc']:.3f}{spread} over {int(best['seeds'])} seed(s)")
    repeats = sorted(set(table.loc[table["same_as"] == best["point"], "point"])) if "same_as" in table else []
    if repeats:
        lines.append(f"      the same network as {', '.join(repeats)} (rounding gives them its depth, width and size)")
    lines.append(noise_verdict(summary))
    mixed = results.mixed_training(table)
    if mixed:
        lines.append(mixed)
    lines += ["", results.format_summary(summary), ""]
    storage = sweep_dir / "storage.txt"  # written when search.storage names another study than study.db
    study = storage.read_text().strip() if storage.exists() else sweep_dir / "study.db"
    problems = f", {sweep_dir / 'search.log'}" if (sweep_dir / "search.log").exists() else ""
    files = [f"table  {results.table_path(sweep_dir)}", f"study  {study}",
             f"logs   {sweep_dir / 'logs'}/trial_*/metrics.csv{problems}"]
    if logger_kind == "wandb":
        runs = sweep_dir / "wandb"
        files.append(f"W&B    {runs} (offline; `wandb sync {runs}/offline-run-*` uploads)")
    return "\n".join(lines + files)


def percent(fraction: float) -> str:
    """0.1 → '10%', 0.001 → '0.1%': a tolerance as typed, not rounded to whole percents."""
    return f"{float(fraction) * 100:.3g}%"


def exit_if_nothing_completed(table: pd.DataFrame, sweep_dir: Path, command: str = "search",
                              mine: pd.Series | None = None) -> None:
    """Exit 1, with where to look, when every trial of the command failed: nothing to rank or compare,
    and a script must see it. `mine`: which rows are the command's (by default the search's)."""
    mine = ~results.from_compare(table) if mine is None else mine
    states = set(table.loc[mine, "state"]) if "state" in table else set()
    if "FAIL" in states and "COMPLETE" not in states:
        log_file = sweep_dir / f"{command}.log"
        tracebacks = f", tracebacks in {log_file}" if log_file.is_file() else ""
        print(f"effscale {command}: no trial completed (why each failed: the reason column of "
              f"{results.table_path(sweep_dir)}{tracebacks})", file=sys.stderr)
        raise SystemExit(1)


def end_search(table: pd.DataFrame, sweep_dir: Path, failure: str | None = None) -> None:
    """The last of `effscale search`, however its workers ran: why a part of it ended early
    (`failure`, on stderr), then its exit status: 1 when no trial completed or a worker failed."""
    if failure:
        print(f"effscale search: {failure}", file=sys.stderr)
    exit_if_nothing_completed(table, sweep_dir)
    if failure:
        raise SystemExit(1)


def noise_verdict(summary: pd.DataFrame) -> str:
    """One plain sentence on whether the best point's lead is more than seed noise."""
    if len(summary) < 2:
        return "noise: one point trained, so there is no runner-up to tell it from"
    noise = results.seed_noise(summary)
    if noise is None:
        return ("noise: unknown, no point was trained with more than one seed "
                "(search.top_k and search.extra_seeds train the best points again)")
    runner = summary.iloc[1]
    if noise.sigma == 0:  # every seed of every point scored alike: often a network that predicts one class
        return (f"noise: unknown, each point trained with several seeds scored the same with every seed "
                f"({noise.pooled_from} point(s)); the lead over alpha={runner['alpha']:g} beta={runner['beta']:g} "
                f"gamma={runner['gamma']:g} is {noise.lead:.3f}")
    text = (f"noise: seeds move val acc by ±{noise.sigma:.3f} (std over seeds, {noise.pooled_from} point(s)); "
            f"the lead over alpha={runner['alpha']:g} beta={runner['beta']:g} gamma={runner['gamma']:g} is "
            f"{noise.lead:.3f} against a noise margin of {noise.margin:.3f} (2 standard errors), so ")
    if not noise.within:
        return text + "the best point is better than the runner-up beyond seed noise."
    return text + (f"the lead is WITHIN NOISE: {noise.tied} of the other {len(summary) - 1} points cannot be told "
                   "apart from the best at this budget (more data or epochs would separate them).")
