"""What each setting a user types accepts, checked before a command runs anything.

Hydra composes the config and refuses unknown keys, except those added with `++key=…` or inside a
mapping value (`compare.trainer={max_epoch: 1}`); it does not know that `trainer.lr` is a number above 0
or `search.top_k` a count. `check_config` does, for every section a command reads: an unknown key or a
wrong value is one line naming its key (`trainer.lr: expected a number above 0, got 'abc'`), exit
status 2, before a sweep folder exists. Values that depend on each other or on files (the grid, the data set's
sizes, a budget no point meets, the device count) are checked where they are used.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from effscale.errors import UserError
from effscale.scaling import OFFICIAL_VARIANTS, VARIANT_FAMILIES

# A predicate on the value and the words that say what it accepts.
Check = tuple[Callable[[Any], bool], str]


def _integer(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def count(low: int = 1) -> Check:
    return (lambda v: _integer(v) and v >= low), f"an integer of at least {low}"


def integer_range(low: int, high: int) -> Check:
    return (lambda v: _integer(v) and low <= v <= high), f"an integer from {low} to {high}"


def text(what: str) -> Check:
    """Text that is not blank, described to the user as `what`."""
    return (lambda v: isinstance(v, str) and v.strip() != ""), what


def above(low: float) -> Check:
    return (lambda v: _real(v) and v > low), f"a number above {low:g}"


def at_least(low: float) -> Check:
    return (lambda v: _real(v) and v >= low), f"a number of at least {low:g}"


def below_one() -> Check:
    return (lambda v: _real(v) and 0 <= v < 1), "a number in [0, 1)"


def one_of(*options: str) -> Check:
    """One of `options`, compared as text (Hydra reads `trainer.precision=32` as the integer 32)."""
    return (lambda v: not isinstance(v, bool) and str(v) in options), \
        (" or ".join(options) if len(options) == 2 else "one of " + ", ".join(options))


def number_list(low: float | None = None) -> Check:
    """A list of one or more numbers, each above `low` when given."""
    ok = _real if low is None else above(low)[0]
    return (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(map(ok, v))), \
        "a list of one or more numbers" + ("" if low is None else f" above {low:g}")


NUMBER: Check = _real, "a number"  # its range is scaling.py's to judge, with the message the paper's terms give


def optional(check: Check) -> Check:
    ok, expected = check
    return (lambda v: v is None or ok(v)), f"null or {expected}"


FLAG: Check = (lambda v: isinstance(v, bool)), "true or false"
VARIANTS: Check = ((lambda v: v is None or v == "all" or (isinstance(v, str) and v in OFFICIAL_VARIANTS)
                    or (isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) and x in OFFICIAL_VARIANTS
                                                                   for x in v))),
                   f"all or a list of {', '.join(OFFICIAL_VARIANTS)}")
BATCHES: Check = ((lambda v: v is None or (_integer(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)),
                  "null, a count of at least 1 or a fraction in (0, 1]")
PHIS: Check = ((lambda v: isinstance(v, list) and len(v) > 0 and all(_real(p) and p >= 0 for p in v)),
               "a list of one or more numbers of at least 0")
RANGE: Check = ((lambda v: isinstance(v, list) and len(v) == 2 and all(map(_real, v)) and v[0] <= v[1]),
                 "[low, high], two numbers with low <= high")
GAMMAS: Check = ((lambda v: v is None or (isinstance(v, list) and len(v) > 0 and all(_real(g) and g > 0 for g in v))),
                 "null or a list of one or more numbers above 0")
STRATEGIES: Check = ((lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(s, str) for s in v)),
                     "a list of one or more strategies, such as [compound, width, depth, resolution]")
STAGES: Check = ((lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(s, dict) for s in v)),
                 "a list of one or more stages")
SCALE_RULE = one_of("width", "width_up", "none")  # whether channels follow the width multiplier (scaling.py)
FILE_PATH, FOLDER = text("a file path"), text("a folder path")
# W&B refuses these in a project name, but only once a trial starts its run.
WANDB_PROJECT: Check = ((lambda v: isinstance(v, str) and v.strip() != "" and not set("/\\#?%:") & set(v)),
                        "a W&B project name without / \\ # ? % : (a team is WANDB_ENTITY=team)")
# `name` is one folder inside `out` (results/<name>): not a path that leaves it.
FOLDER_NAME: Check = ((lambda v: isinstance(v, (str, int)) and not isinstance(v, bool)
                       and str(v).strip() not in ("", ".", "..") and "/" not in str(v) and "\\" not in str(v)),
                      "a folder name without / (the sweep folder is out/name)")

# Bounds on what a typo could make thousands of: threads a process starts, processes a command starts
# (data-loading processes, local workers or cluster jobs).
MAX_THREADS, MAX_PROCESSES = 1024, 1024

# Lightning's precision settings, its short forms included.
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32", "16", "64", "bf16")

# The training recipe: the `trainer` group, `compare.trainer` and `finetune.recipe`.
TRAINER: dict[str, Check] = {
    "max_epochs": count(1),
    "optimizer": one_of("adamw", "sgd"),
    "lr": above(0),
    "momentum": below_one(),
    "weight_decay": at_least(0),
    "warmup_epochs": at_least(0),
    "label_smoothing": below_one(),
    "gradient_clip_val": optional(above(0)),
    "precision": one_of(*PRECISIONS),
    "devices": ((lambda v: v in ("auto", None) or count(1)[0](v)), "a positive integer or auto"),
    "threads": optional(integer_range(1, MAX_THREADS)),
    "num_workers": optional(integer_range(0, MAX_PROCESSES)),
    "limit_train_batches": BATCHES,
    "limit_val_batches": BATCHES,
    "log_every_n_steps": count(1),
    "progress": ((lambda v: v in ("auto", None) or isinstance(v, bool)), "auto, true or false"),
    "nesterov": FLAG, "zero_init_residual": FLAG, "channels_last": FLAG, "deterministic": FLAG,
}

# A convolution's kernel: odd, so its padding keeps the map's size and a residual adds alike shapes.
KERNEL: Check = (lambda v: _integer(v) and v >= 1 and v % 2 == 1), "an odd integer of at least 1"
# One stage of `baseline.stages`, checked as baseline.stages[i].
STAGE: dict[str, Check] = {"channels": count(1), "repeats": count(1), "stride": count(1), "kernel": KERNEL,
                           "expand": above(0), "se": below_one(), "fixed_repeats": FLAG}
NAME = text("a name")
ACTIVATIONS = ("hardswish", "relu", "relu6", "silu")  # those effscale/models/blocks.py builds
MEASURE_BATCH = integer_range(1, 65_536)
# A study every launch and worker can open again: in the sweep folder (null), a journal file or a database.
STORAGE: Check = ((lambda v: v is None or (isinstance(v, str) and v.strip() not in ("", "sqlite://", "sqlite:///",
                                                                                   "journal://", "journal:///")
                                            and not v.endswith(":memory:"))),
                  "null (study.db in the sweep folder), journal:///FILE or a database URL with a file or server "
                  "(an in-memory study ends with the process)")
DEVICE: Check = (lambda v: isinstance(v, str)), "auto, cpu, cuda or cuda:N"


# Each section a command may read, by its path in the config. A key a config leaves out keeps its default.
SECTIONS: dict[str, dict[str, Check]] = {
    "": {"seed": count(0), "name": FOLDER_NAME, "variant": optional(one_of(*OFFICIAL_VARIANTS)), "device": DEVICE,
         "out": FOLDER},
    "data": {"resolution": optional(count(1)), "num_classes": optional(count(1)), "in_channels": count(1),
             "native_resolution": count(1), "batch_size": count(1), "data_seed": count(0), "mean": number_list(),
             "std": number_list(0), "val_fraction": ((lambda v: _real(v) and 0 < v < 1), "a number in (0, 1)"),
             "hflip": FLAG, "verify": FLAG, "download": FLAG},
    "trainer": TRAINER,
    "search": {"phi": at_least(0), "n_trials": optional(count(1)), "top_k": count(0), "extra_seeds": count(0),
               "workers": integer_range(1, MAX_PROCESSES), "retry_failed": FLAG, "stale_after_s": above(0),
               "storage": STORAGE},
    "search.grid": {"alpha": RANGE, "beta": RANGE, "step": above(0), "tolerance": at_least(0), "gamma_values": GAMMAS,
                    "gamma_multiple": optional(at_least(0))},
    "baseline": {"name": NAME, "stages": STAGES, "resolution": count(1), "divisor": count(1), "dropout": below_one(),
                 "stochastic_depth": below_one(), "channel_scale": SCALE_RULE, "activation": one_of(*ACTIVATIONS),
                 "variants": one_of(*VARIANT_FAMILIES)},
    "baseline.stem": {"channels": count(1), "kernel": KERNEL, "stride": count(1), "scale": SCALE_RULE},
    "baseline.head": {"channels": count(1), "scale": SCALE_RULE},
    "scale": {"resolution_multiple": optional(count(1)), "alpha": NUMBER, "beta": NUMBER, "gamma": NUMBER},
    "budget": {"macs_tolerance": optional(at_least(0)), "max_params": optional(count(1)),
               "max_peak_mem_mb": optional(above(0)), "max_latency_ms": optional(above(0))},
    "measure": {"variants": VARIANTS, "batch_size": MEASURE_BATCH, "memory": FLAG, "latency": FLAG,
                "optimizer": one_of("sgd", "adamw")},
    "compare": {"phis": PHIS, "strategies": STRATEGIES, "seeds": count(1), "macs_tolerance": at_least(0)},
    "compare.trainer": TRAINER,
    "finetune": {"head_epochs": count(1), "unfreeze_epochs": count(0), "backbone_lr_mult": above(0),
                 "unfreeze_grad_clip": optional(above(0)), "train_bn": FLAG, "batch_size": count(1),
                 "min_resolution": count(1), "checkpoint": FILE_PATH,
                 "weights": text("imagenet, lite0 or a weights file")},
    "finetune.recipe": TRAINER,
    "logger": {"name": one_of("wandb", "csv"), "project": WANDB_PROJECT},
    "strategy": {"name": ((lambda v: v == "compound"), "compound (a search's grid is of compound coefficients; "
                          "effscale compare scales width, depth or resolution alone: compare.strategies)")},
}


# Keys of a section that effscale reads and checks where it uses them (the data set's name and sizes,
# the sampler and pruner, the scale's single dimensions), beside those `SECTIONS` checks; a key of
# neither is a typo that nothing would read. The top level and the stage table are checked apart.
READ_ELSEWHERE: dict[str, set[str]] = {
    "data": {"name", "root", "train_size", "val_size", "test_size", "num_workers"},
    "search": {"grid", "sampler", "pruner", "reduction_factor", "min_epochs"},
    "scale": {"phi", "depth", "width", "resolution"},
    "compare": {"trainer", "from_search"},
    "finetune": {"recipe"},
}
CLOSED = ("data", "trainer", "search", "search.grid", "scale", "budget", "measure", "compare", "compare.trainer",
          "finetune", "finetune.recipe", "logger", "strategy")
# Sections read as `… or {}`: null is the same as empty there.
MAY_BE_NULL = ("scale", "compare.trainer")
# The top-level keys of every command's config and of the sweeps/ presets (cluster: +sweep=slurm's).
TOP_LEVEL = {"seed", "name", "variant", "device", "out", "format", "data", "baseline", "scale", "budget", "search",
             "strategy", "trainer", "logger", "measure", "compare", "finetune", "cluster"}


def check_values(values: dict[str, Any], section: str, checks: dict[str, Check]) -> None:
    """Raise a UserError naming `section.key` for the first value of `values` its check refuses."""
    for key, (ok, expected) in checks.items():
        if key in values and not ok(values[key]):
            raise UserError(f"{section + '.' if section else ''}{key}: expected {expected}, got {values[key]!r}")


def check_config(cfg: dict[str, Any]) -> None:
    """Check every section of a resolved config (`config.to_dict`) that `SECTIONS` describes."""
    unknown = sorted(set(cfg) - TOP_LEVEL)
    if unknown:  # `+lr=0.1` for trainer.lr: Hydra adds the key, and nothing would read it
        raise UserError(f"{unknown[0]}: unknown key; a command's settings are {', '.join(sorted(TOP_LEVEL))}")
    for path, checks in SECTIONS.items():
        values: Any = cfg
        present = True  # `search.grid=null` on the command line leaves the key with nothing under it
        for part in filter(None, path.split(".")):
            present = isinstance(values, dict) and part in values
            values = values.get(part) if isinstance(values, dict) else None
        if isinstance(values, dict):
            if path in CLOSED:
                _check_keys(path, values, set(), set(checks) | READ_ELSEWHERE.get(path, set()))
            check_values(values, path, checks)
        elif values is not None or (present and path in CLOSED and path not in MAY_BE_NULL):  # scale=abc, measure=null
            raise UserError(f"{path}: expected a mapping of keys, got {values!r}")
    scale = cfg.get("scale")
    phi = scale.get("phi") if isinstance(scale, dict) else None
    if phi is not None and "search" in cfg:  # search and compare (which starts from the search's config)
        own = "compare.phis" if "compare" in cfg else "search.phi"
        raise UserError(f"scale.phi={phi}: this command scales the baseline at {own} itself; scale.phi would "
                        "compound-scale the baseline first (scale.width, scale.depth and scale.resolution scale "
                        "the baseline)")
    if isinstance(cfg.get("baseline"), dict):
        check_stage_table(cfg["baseline"])
    for i, stage in enumerate((cfg.get("baseline") or {}).get("stages") or []):
        check_values(stage, f"baseline.stages[{i}]", STAGE)


# The keys of a baseline's stage table (conf/baseline/*.yaml), required and optional, and those each
# block type reads beside block, stride, channels and repeats. A key nothing reads is refused rather
# than ignored: `kernel: 5` on a basic block would otherwise build the same 3×3 network silently.
TABLE_KEYS = {"name", "family", "resolution", "activation", "stem", "stages"}
TABLE_OPTIONAL = {"divisor", "channel_scale", "bn", "dropout", "stochastic_depth", "head", "variants"}
STEM_KEYS, STEM_OPTIONAL = {"channels", "kernel", "stride"}, {"scale"}
STAGE_KEYS = {"block", "stride", "channels", "repeats"}
STAGE_OPTIONAL = {"fixed_repeats"}
BLOCK_KEYS = {"mbconv": {"expand", "kernel", "se"}, "inverted_residual": {"expand", "kernel"},
              "basic": set(), "bottleneck": set()}
FAMILIES = ("efficientnet", "mobilenet_v2", "resnet")  # module layouts effscale/models/network.py builds


def check_stage_table(table: dict[str, Any], section: str = "baseline",
                      recorded: frozenset[str] = frozenset()) -> None:
    """Every key of a baseline's stage table is one the builder reads (or one of `recorded`), and every
    key it needs is there; else one UserError naming the key as `<section>.<key>`. (`SECTIONS` checks the
    values.)"""
    _check_keys(section, table, TABLE_KEYS, TABLE_OPTIONAL | recorded)
    _check_keys(f"{section}.stem", table["stem"], STEM_KEYS, STEM_OPTIONAL)
    if table["family"] not in FAMILIES:
        raise UserError(f"{section}.family: unknown {table['family']!r}; expected {', '.join(FAMILIES)}")
    head = table.get("head")
    if head is None and table["family"] != "resnet":
        raise UserError(f"{section}.head: required for family {table['family']} (a 1×1 conv of head.channels)")
    if head is not None and table["family"] == "resnet":
        raise UserError(f"{section}.head: a resnet has no head conv (its last stage feeds the classifier); "
                        "set head: null")
    if head is not None:
        _check_keys(f"{section}.head", head, {"channels"}, {"scale"})
    if table.get("stochastic_depth") and table["family"] != "efficientnet":
        raise UserError(f"{section}.stochastic_depth: only efficientnet blocks drop their residual branch; "
                        f"a {table['family']} builds none, so set 0")
    if table.get("bn") is not None:
        _check_keys(f"{section}.bn", table["bn"], set(), set(BN))
        check_values(table["bn"], f"{section}.bn", BN)
    for i, stage in enumerate(table["stages"] if isinstance(table["stages"], list) else []):
        where = f"{section}.stages[{i}]"
        block = stage.get("block") if isinstance(stage, dict) else None
        if not isinstance(block, str) or block not in BLOCK_KEYS:
            raise UserError(f"{where}.block: unknown block {block!r}; expected one of {', '.join(BLOCK_KEYS)}")
        _check_keys(where, stage, STAGE_KEYS, STAGE_OPTIONAL | BLOCK_KEYS[block], f"a {block} block")


# What `scaling.scaled_baseline` records in the table it returns, beside the baseline's own keys.
SCALING_RECORD = frozenset({"width_mult", "depth_mult", "resolution_mult", "variant"})
BN: dict[str, Check] = {"eps": above(0), "momentum": optional(at_least(0))}


def check_scaled_table(table: Any, section: str) -> None:
    """A scaled stage table read back from a file (an effscale checkpoint's): the keys and values
    `check_config` checks in a baseline, named as `<section>.<key>`."""
    check_stage_table(table, section, SCALING_RECORD)
    check_values(table, section, SECTIONS["baseline"])
    for part in ("stem", "head"):
        if isinstance(table.get(part), dict):
            check_values(table[part], f"{section}.{part}", SECTIONS[f"baseline.{part}"])
    for i, stage in enumerate(table["stages"]):
        check_values(stage, f"{section}.stages[{i}]", STAGE)


def check_mapping(values: Any, where: str, checks: dict[str, Check]) -> None:
    """`values` is a mapping of the keys of `checks`, none missing and no other, each one its check accepts."""
    _check_keys(where, values, set(checks), set())
    check_values(values, where, checks)


def _check_keys(where: str, part: Any, required: set[str], optional: set[str], what: str = "") -> None:
    if not isinstance(part, dict):
        raise UserError(f"{where}: expected a mapping of keys, got {part!r}")
    unknown = sorted(set(part) - required - optional)
    if unknown:
        takes = ", ".join(sorted(required) + sorted(optional))
        raise UserError(f"{where}.{unknown[0]}: unknown key{' for ' + what if what else ''}; it takes {takes}")
    missing = sorted(required - set(part))
    if missing:
        raise UserError(f"{where}.{missing[0]}: missing")
