"""The results table of a sweep: `results/<sweep>/trials.csv`, one row per trial, pandas only.

A row is keyed by (point, seed, strategy): running a sweep again replaces its rows and never
duplicates them. Every write goes to a temporary file in the same folder and is renamed over the
table (`os.replace` is atomic on POSIX), so a reader (the report, a dashboard, a second shell) sees
the old table or the new one, never half of one. Workers of one sweep take turns at the table through
an exclusive lock on `.trials.csv.lock` beside it, so that none loses another's rows.

Beside the table, `settings.json` records what the trials of each command (search, compare) were
trained with, so that a sweep is resumed only with the same baseline, data and recipe.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from effscale.errors import UserError
from effscale.files import exclusive, write_atomically

# The contract columns other tools rely on (README, "Search α, β, γ": Results), then the rest, in the order written.
CONTRACT = ["trial", "strategy", "phi", "alpha", "beta", "gamma", "depth_mult", "width_mult", "resolution",
            "params", "macs", "macs_ratio", "peak_mem_mb", "feasible", "state", "val_acc", "seed", "epochs",
            "train_seconds"]
COLUMNS = CONTRACT + ["test_acc", "reason", "flops", "activations", "latency_ms", "constraint", "point",
                      "same_as", "baseline", "dataset", "device", "precision"]
KEY = ["point", "seed", "strategy"]
TABLE = "trials.csv"  # a sweep folder's results table
STATES = ("COMPLETE", "PRUNED", "FAIL", "INFEASIBLE")
# What a trained model's outcome (train.fit_or_fail) gives its row, besides its state.
OUTCOME_KEYS = ("val_acc", "test_acc", "epochs", "train_seconds", "reason", "device", "precision")
INTEGER = ["trial", "resolution", "params", "macs", "flops", "activations", "seed", "epochs"]
SINGLE_DIMENSIONS = ("width", "depth", "resolution")  # the strategies compound scaling is compared with
COMPARE_PREFIX = "compare_"  # the point ids of the rows `effscale compare` writes
# The model a compare row holds: resuming keeps a row only when it is the model this run planned (another
# scale.resolution_multiple can plan another model at the same compound point).
MODEL_COLUMNS = ("depth_mult", "width_mult", "resolution")


def from_compare(df: pd.DataFrame) -> pd.Series:
    """Which rows `effscale compare` wrote; the rest are the α/β/γ search's."""
    if "point" not in df:
        return pd.Series(False, index=df.index)
    return df["point"].astype(str).str.startswith(COMPARE_PREFIX)


def search_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The rows `effscale search` wrote: compound, at the φ it searched (1, as in the paper, unless
    search.phi said otherwise; of tables from several searches put together, φ = 1's or the most rows')."""
    rows = df[(df["strategy"] == "compound") & ~from_compare(df)]
    if rows["phi"].nunique() > 1:
        rows = rows[rows["phi"] == (1 if (rows["phi"] == 1).any() else rows["phi"].mode().iloc[0])]
    return rows


def best_point(trials: pd.DataFrame, metric: str = "val_acc") -> tuple[float, float, float]:
    """The (α, β, γ) of a search's best grid point: the highest mean `metric` over its completed seeds
    (ties as `results.best_first` breaks them). A point that only repeats another's network (`same_as`)
    has that point's first seed alone, so it is left out."""
    rows = search_trials(trials)
    rows = rows[rows["state"] == "COMPLETE"]
    rows = trained(rows).dropna(subset=[metric])
    if rows.empty:
        raise ValueError("no completed search trial")
    columns = {metric: (metric, "mean")} | ({"macs_ratio": ("macs_ratio", "first")} if "macs_ratio" in rows else {})
    means = rows.groupby(["alpha", "beta", "gamma"], sort=False).agg(**columns).reset_index()
    best = best_first(means, metric).iloc[0]
    return float(best["alpha"]), float(best["beta"]), float(best["gamma"])


def read_trials(path: str | Path) -> pd.DataFrame:
    """The table at `path` (a trials.csv or the sweep folder holding it); empty if there is none. One
    that cannot be read as written is a UserError (`read_table`)."""
    path = table_path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    table = read_table(path)
    missing = [c for c in ("strategy", "state") if c not in table.columns]  # what every reader selects rows by
    if missing:
        raise UserError(f"{path}: not an effscale results table (no {missing[0]} column)")
    return _typed(table)


def read_table(path: Path) -> pd.DataFrame:
    """The CSV file at `path` as written, or a one-line UserError saying what is wrong with it: it cannot
    be read, it is not a CSV table, or a row has fewer fields than the header. pandas would fill such a
    row's last fields with blanks, and a table cut off mid-row (a full disk, an editor) would then be
    read as a trial with a wrong accuracy or none."""
    try:
        text = path.read_text()
        table = pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the results table is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV table ({str(exc).splitlines()[0]})") from None
    except OSError as exc:  # a file this user may not read
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    header, *rows = (len(fields) for fields in csv.reader(io.StringIO(text)))
    short = next((i for i, n in enumerate(rows, 1) if 0 < n < header), None)
    if short is not None:
        raise UserError(f"{path}: row {short} has {rows[short - 1]} of the header's {header} fields "
                        "(cut off, or edited by hand?); once it is moved aside, the search's command writes it "
                        "again from its study (a comparison's rows are only in the table)")
    return table


def write_trials(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the whole table atomically: a temporary file beside it, then one rename."""
    path = table_path(path)
    extra = [c for c in table.columns if c not in COLUMNS]
    table = table.reindex(columns=COLUMNS + extra)
    return write_atomically(path, lambda f: table.to_csv(f, index=False))


# Settings that change how fast a trial runs, what it prints or where its files are read from, not what
# it learns (the same Fashion-MNIST files may sit in another folder on a cluster's nodes).
RUNTIME_SETTINGS = ("threads", "progress", "num_workers", "log_every_n_steps", "root", "download")


def without_runtime(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` (data or recipe) less those that say where or how fast it runs (`RUNTIME_SETTINGS`)."""
    return {k: v for k, v in settings.items() if k not in RUNTIME_SETTINGS}


def as_recorded(value: Any) -> Any:
    """`value` as settings.json holds it: JSON's types, anything else as its text."""
    return json.loads(json.dumps(value, default=str))


def trained_with(baseline: dict[str, Any], data: dict[str, Any], classes: list[str], recipe: dict[str, Any],
                 **extra: Any) -> dict[str, Any]:
    """What a trial's result depends on: the (scaled) baseline, the data (its settings and the classes
    read from it: another folder under the same data.root is other data) and the training recipe."""
    return as_recorded({"baseline": baseline, "data": {**without_runtime(data), "classes": list(classes)},
                        "trainer": without_runtime(recipe), **extra})


# Settings recorded since a later effscale: a sweep recorded before has them unset, and is not refused for it.
RECORDED_SINCE = ("data.classes",)


def check_settings(sweep_dir: str | Path, command: str, settings: dict[str, Any], trained: bool = False,
                   worker: bool = False) -> None:
    """Record `settings` (from `trained_with`) as what `command`'s trials in `sweep_dir` are trained
    with, in settings.json; if the sweep recorded others, refuse to go on: its finished trials would be
    kept and ranked beside trials trained differently. The error names the first settings that differ.
    While neither the table holds a row of `command`'s nor the caller knows of a trial finished or
    under way (`trained`: the search's study), as after a first run stopped by a corrupt image or a
    Ctrl-C before a trial finished, there is nothing to mix with: the new settings are recorded instead,
    unless this is a `worker` of a launch, which trains with the launch's. A sweep with trained trials
    and no record of their settings (settings.json deleted) is refused."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "settings.json"
    with locked(sweep_dir):
        try:
            recorded = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read it ({exc}); it records what the sweep was trained with") from None
        if not isinstance(recorded, dict) or not isinstance(recorded.get(command, {}), dict):
            raise UserError(f"{path}: expected a JSON object of settings by command, got {str(recorded)[:60]!r}; "
                            "it records what the sweep was trained with")
        before = recorded.get(command)
        table = read_trials(sweep_dir)
        ours = table[from_compare(table) == (command == "compare")]
        # The search's rows that its study does not hold are an earlier study's, set aside: `trained` says.
        untrained = not trained and (command == "search" or (ours["state"] == "INFEASIBLE").all())
        if before is None and not untrained:
            raise UserError(f"{path}: no record of the settings the sweep's {command} trials were trained with "
                            f"({'missing' if not recorded else f'none for {command}'}); put the file back, or start "
                            "another sweep with name=…")
        if before is None or (not trained and not worker and (ours["state"] == "INFEASIBLE").all()):
            write_atomically(path, lambda f: json.dump({**recorded, command: settings}, f, indent=1, sort_keys=True))
            return
    changed = [(key, was, now) for key, was, now in differences(before, settings)
               if not (key in RECORDED_SINCE and was == UNSET)]
    if changed:
        told = "; ".join(f"{key} {shown(was, now)}, now {shown(now, was)}" for key, was, now in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise UserError(f"{sweep_dir}: its {command} trials were trained with other settings ({told}{more}); "
                        "run it with those, or start another sweep with name=…")


def recorded_settings(sweep_dir: str | Path, command: str) -> dict[str, Any] | None:
    """What settings.json records for `command`'s trials; None when it records none or cannot be read
    (`check_settings` says why when the sweep runs again)."""
    try:
        recorded = json.loads((Path(sweep_dir) / "settings.json").read_text())
    except (OSError, ValueError):
        return None
    settings = recorded.get(command) if isinstance(recorded, dict) else None
    return settings if isinstance(settings, dict) else None


UNSET = "unset"  # the value `differences` gives a key one of the two settings lacks


def differences(was: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Each key (dotted, sorted) whose value differs between two settings, with both values."""
    before, after = dict(_flat(was)), dict(_flat(now))
    return [(key, before.get(key, UNSET), after.get(key, UNSET)) for key in sorted(before.keys() | after.keys())
            if before.get(key, UNSET) != after.get(key, UNSET)]


def shown(value: Any, other: Any, most: int = 60) -> str:
    """A setting as a refusal shows it beside `other`: a list from where the two first differ, with its
    length (a thousand class names, the last one gone), anything else cut to its start."""
    text = repr(value)
    if isinstance(value, list) and isinstance(other, list) and max(len(text), len(repr(other))) > most:
        at = next((i for i, (a, b) in enumerate(zip(value, other)) if a != b), min(len(value), len(other)))
        return f"{len(value)} items, [{at}] {repr(value[at])[:most] if at < len(value) else 'none'}"
    return text if len(text) <= most else f"{text[:most - 3]}..."


def _flat(settings: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in settings.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `.trials.csv.lock` beside the table: workers of one sweep update it
    in turn, so no worker's read-modify-write loses another's row."""
    path = table_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path.parent / f".{path.name}.lock"):
        yield


def _aside(path: Path, table: pd.DataFrame) -> Path:
    """Write `table` to `trials.before-<time>.csv` beside the table at `path`; that file's path."""
    aside = path.with_name(f"trials.before-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    write_trials(table, aside)
    return aside


def set_aside_search_rows(sweep_dir: str | Path) -> tuple[int, Path] | None:
    """Copy the table to `trials.before-<time>.csv` beside it and keep only compare's rows in it: for a
    search whose study is new, the search rows already there are another study's (a copied folder, a
    deleted or moved study). How many rows went, and where; None when there were none."""
    path = table_path(sweep_dir)
    with locked(path):
        table = read_trials(path)
        searched = ~from_compare(table)
        if not searched.any():
            return None
        aside = _aside(path, table)
        write_trials(table[~searched], path)
    return int(searched.sum()), aside


def copy_aside(sweep_dir: str | Path) -> Path:
    """Copy the table, as it is, to `trials.before-<time>.csv` beside it, before a run replaces rows of
    it; the copy's path."""
    path = table_path(sweep_dir)
    with locked(path):
        return _aside(path, read_trials(path))


def upsert_trials(path: str | Path, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Merge `rows` into the table at `path`, replacing any row with the same (point, seed, strategy)."""
    new = pd.DataFrame(list(rows))
    with locked(path):
        return _upsert(path, new)


def _upsert(path: str | Path, new: pd.DataFrame) -> pd.DataFrame:
    old = read_trials(path)
    if new.empty:
        return old
    table = pd.concat([df for df in (old, new) if not df.empty], ignore_index=True)
    table = table.reindex(columns=COLUMNS + [c for c in table.columns if c not in COLUMNS])
    table = table.drop_duplicates(subset=KEY, keep="last")
    table = _typed(table.sort_values(["feasible", "trial", "point", "seed"], ascending=[False, True, True, True],
                                     na_position="last", kind="stable").reset_index(drop=True))
    write_trials(table, path)
    return table


def mixed_training(table: pd.DataFrame) -> str | None:
    """A caveat when the trained rows of `table` ran on more than one device or in more than one
    precision (a sweep resumed on other hardware, workers on mixed nodes): mixed precision changes the
    accuracy a recipe reaches, so they rank apart. None when they are alike, or nothing says."""
    ran = table[table["state"].isin(["COMPLETE", "PRUNED"])] if "state" in table else table
    mixed = []
    for column in ("device", "precision"):
        counts = ran[column].value_counts() if column in ran else pd.Series(dtype=int)
        if len(counts) > 1:
            mixed.append(f"{column}s " + ", ".join(f"{value} ({n})" for value, n in counts.items()))
    return f"trials trained on several {' and '.join(mixed)}: compare them with care" if mixed else None


def trained(table: pd.DataFrame) -> pd.DataFrame:
    """The rows whose trial trained its network, leaving out those that record the result of another
    point with the same network (`same_as`, effscale/search.py)."""
    return table[table["same_as"].isna()] if "same_as" in table else table


def best_first(points: pd.DataFrame, mean: str = "val_acc") -> pd.DataFrame:
    """Grid points (one row each: alpha, beta, macs_ratio and a `mean` column) best first, so that the
    search's verdict, the report's table and compare's choice of coefficients name the same point.
    Ties go to the point that trained its network rather than one that repeats it (`same_as`), then
    to the cheaper one by measured MACs (α·β²·γ² is 2 for all of them, up to γ's rounding), then to
    the smaller α and β. Points without a mean follow, by α and β."""
    keyed = points.assign(_repeat=points["same_as"].notna() if "same_as" in points else False,
                          _macs=points["macs_ratio"] if "macs_ratio" in points else 0.0)
    ranked = keyed[keyed[mean].notna()].sort_values([mean, "_repeat", "_macs", "alpha", "beta"],
                                                     ascending=[False, True, True, True, True], kind="stable")
    rest = keyed[keyed[mean].isna()].sort_values(["alpha", "beta"], kind="stable")
    return pd.concat([ranked, rest]).drop(columns=["_repeat", "_macs"]).reset_index(drop=True)


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per trained point: mean, standard deviation and count of `val_acc` over its seeds,
    best mean first. PRUNED and FAIL trials do not count towards a point's accuracy, and a point that
    repeats another's network (`same_as`) is that point's row, not a second one."""
    done = trained(table[table["state"] == "COMPLETE"])
    if done.empty:
        return pd.DataFrame(columns=["point", "alpha", "beta", "gamma", "resolution", "macs_ratio", "params",
                                     "val_acc", "val_std", "seeds", "test_acc", "train_seconds"])
    grouped = done.groupby(["strategy", "point"], sort=False)
    summary = grouped.agg(alpha=("alpha", "first"), beta=("beta", "first"), gamma=("gamma", "first"),
                          resolution=("resolution", "first"), macs_ratio=("macs_ratio", "first"),
                          params=("params", "first"), val_acc=("val_acc", "mean"), val_std=("val_acc", "std"),
                          seeds=("val_acc", "size"), test_acc=("test_acc", "mean"),
                          train_seconds=("train_seconds", "mean")).reset_index()
    return best_first(summary)


@dataclass(frozen=True)
class Noise:
    """How far seed-to-seed noise reaches in a seed summary (best mean first)."""

    sigma: float    # seed-to-seed standard deviation of val_acc, pooled over points with >= 2 seeds
    pooled_from: int  # how many points that estimate comes from
    lead: float     # best mean minus runner-up mean
    margin: float   # two standard errors of that difference
    tied: int       # other points whose difference from the best is within two standard errors

    @property
    def within(self) -> bool:
        return self.lead <= self.margin


def seed_noise(summary: pd.DataFrame) -> Noise | None:
    """Is the best point's lead more than seed noise?

    Every point shares one seed-to-seed standard deviation σ, pooled (by degrees of freedom) over the
    points trained with several seeds; a mean over n seeds then has standard error σ/√n, and two
    points differ beyond noise when their means are more than 2·σ·√(1/n₁ + 1/n₂) apart. None when
    fewer than two points were trained or none with two seeds.
    """
    multi = summary[summary["seeds"] >= 2]
    if len(summary) < 2 or multi.empty:
        return None
    dof = multi["seeds"] - 1
    sigma = math.sqrt(float((multi["val_std"] ** 2 * dof).sum() / dof.sum()))
    best = summary.iloc[0]
    margins = 2 * sigma * (1 / best["seeds"] + 1 / summary["seeds"].iloc[1:]) ** 0.5
    gaps = best["val_acc"] - summary["val_acc"].iloc[1:]
    return Noise(sigma=sigma, pooled_from=len(multi), lead=float(gaps.iloc[0]), margin=float(margins.iloc[0]),
                 tied=int((gaps <= margins).sum()))


def megabytes(peak: float | None) -> str:
    """A peak memory for a table people read: '1,234', '–' when not measured, 'out of memory' when
    the training step did not fit on the device (measure.cuda_peak_train_mb: infinite)."""
    if peak is None or pd.isna(peak):
        return "–"
    return "out of memory" if math.isinf(peak) else f"{peak:,.0f}"


def format_summary(summary: pd.DataFrame) -> str:
    """The seed summary as a compact fixed-width table for a terminal or the README."""
    headers = ["#", "alpha", "beta", "gamma", "res", "MACs x", "params", "val acc", "± std", "seeds",
               "test acc", "train s"]
    body = [[str(i + 1), f"{r.alpha:.2f}", f"{r.beta:.2f}", f"{r.gamma:.3f}", str(int(r.resolution)),
             f"{r.macs_ratio:.2f}", f"{int(r.params) / 1e6:.2f}M", f"{r.val_acc:.3f}",
             "–" if pd.isna(r.val_std) else f"{r.val_std:.3f}", str(int(r.seeds)),
             "–" if pd.isna(r.test_acc) else f"{r.test_acc:.3f}", f"{r.train_seconds:.0f}"]
            for i, r in enumerate(summary.itertuples())]
    return fixed_width(headers, body)


def fixed_width(headers: list[str], body: list[list[str]], left: int = 0) -> str:
    """A text table: the header, a rule, then a line per row; the first `left` columns aligned left,
    the rest (numbers) right."""
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
             for cells in [headers, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_path(path: str | Path) -> Path:
    """The results table of a sweep folder, `<folder>/trials.csv`; a path to a .csv file as it is."""
    path = Path(path)
    return path / TABLE if path.is_dir() or path.suffix != ".csv" else path


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Nullable integers stay integers (a CSV round trip would turn them into floats)."""
    for column in INTEGER:
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce").round().astype("Int64")
    if "feasible" in table.columns:
        table["feasible"] = table["feasible"].astype("boolean")
    return table
