"""What each `effscale` command does once its config is composed (argument parsing lives in cli.py)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from omegaconf import OmegaConf, open_dict

from effscale.config import compose, load, model_table, options_on_search_path
from effscale.devices import resolve_device
from effscale.errors import UserError
from effscale.scaling import variants_of


# Each command checks its config (Hydra, effscale/checks.py, the scaled stage table) before it imports
# torch: a mistyped override is one line in half a second, not after seconds of imports.


def measure(overrides: list[str]) -> None:
    cfg = load("measure", overrides)
    opts = cfg["measure"]
    variants = opts.get("variants")
    if variants == "all":  # the baseline's own: EfficientNet-Lite has b0…b4
        variants = list(variants_of(cfg["baseline"]))
    if isinstance(variants, str):
        variants = [variants]
    if variants is not None and cfg.get("variant") is not None:  # each value alone is checked by `load`
        raise UserError("variant and measure.variants are both set; measure.variants lists every variant to measure")
    fmt = cfg.get("format", "table")
    if fmt not in ("table", "json", "csv"):
        raise UserError(f"format={fmt}: expected table, json or csv")
    tables = {variant: model_table(cfg, variant) for variant in variants or [cfg.get("variant")]}

    from effscale.measure import human, measure_table
    from effscale.models import build_model

    device = resolve_device(cfg["device"])
    data = cfg["data"]
    num_classes, in_channels = data["num_classes"], int(data["in_channels"])
    if num_classes is None:  # an image folder: as many classes as it has class folders
        from effscale.data import build_datamodule

        num_classes = build_datamodule(data, int(data.get("resolution") or 224), 1).num_classes
    rows = []
    for variant, table in tables.items():
        name = model_name(cfg["baseline"]["name"], variant, cfg.get("scale") or {})
        rows.append(measure_table(
            table, lambda t: build_model(t, num_classes, in_channels), in_channels=in_channels,
            batch_size=int(opts["batch_size"]), device=device, memory=bool(opts["memory"]),
            latency=bool(opts["latency"]), optimizer=opts["optimizer"], name=name,
        ).as_dict())
    if fmt == "json":
        for row in rows:  # JSON has no infinity: a step out of the device's memory is null there
            print(json.dumps({k: None if isinstance(v, float) and math.isinf(v) else v for k, v in row.items()}))
    elif fmt == "csv":
        import pandas as pd

        pd.DataFrame(rows).to_csv(sys.stdout, index=False)
    else:
        _print_table(rows, device, int(opts["batch_size"]), human)


def search(overrides: list[str]) -> None:
    """Paper section 4, step 1: the alpha, beta, gamma grid search at phi = 1 (see effscale/search.py)."""
    import time

    started = time.perf_counter()
    cfg = load("search", overrides)
    architecture = model_table(cfg)

    from effscale.results import read_trials
    from effscale.search import Search, end_search, outcome
    from effscale.stops import stops_as_interrupt
    from effscale.workers import open_launch, run_local

    run = Search(cfg, architecture, resolve_device(cfg["device"]))
    run.plan()
    open_launch(run)
    done, total = run.counts()
    # A run stopped after a round of extra seeds: points that moved up among the best by mean have
    # theirs to train still, beyond what `counts` foresees.
    moved_up = len(run.seed_jobs()) if done == total else 0
    failed_before = run.failed_points()
    retry = f" ({failed_before} failed; search.retry_failed=true trains those points again)" if failed_before else ""
    reseeds = bool(cfg["search"].get("top_k")) and bool(cfg["search"].get("extra_seeds")) and done < total
    more = " (and extra seeds for any point that moves up among the best)" if reseeds else ""
    if moved_up:
        more = f", and {moved_up} extra seed(s) for points that moved up among the best"
    print(f"{done} trials already {'ran' if failed_before else 'complete'}{retry}, {total - done} to run{more}")
    workers, failed = int(cfg["search"].get("workers") or 1), 0
    if done == total and not moved_up:
        table = read_trials(run.table)
    elif workers > 1:
        table, failed = run_local(run, overrides, workers)
        if failed and run.settled():  # killed, say: the others took its trial over and finished the sweep
            print(f"effscale search: {failed} of {workers} workers ended early; the others settled every trial",
                  file=sys.stderr)
            failed = 0
    else:
        with stops_as_interrupt():  # `kill`, a closed terminal, scancel: wound down as a Ctrl-C is
            table = run.run()
    print(outcome(table, run.sweep_dir, run.logger_kind))
    elsewhere = run.running_elsewhere()
    if elsewhere:
        print(f"effscale search: {elsewhere}", file=sys.stderr)
    print(f"total {time.perf_counter() - started:.0f} s")
    end_search(table, run.sweep_dir, f"{failed} of {workers} workers failed (their errors are above); the trials "
               "they finished are kept, and the same command trains what is left" if failed else None)


def compare(overrides: list[str]) -> None:
    """Paper table 3 / fig. 8: compound scaling against width, depth and resolution alone at the compound
    model's measured MACs, every model trained with the same seeds; ends with the report (effscale/compare.py)."""
    import time

    started = time.perf_counter()
    cfg = load("compare", overrides)
    architecture = model_table(cfg)

    from effscale.compare import Comparison, outcome
    from effscale.report import write_report
    from effscale.search import exit_if_nothing_completed

    run = Comparison(cfg, architecture, resolve_device(cfg["device"]))
    run.plan()
    table = run.run()
    print(outcome(table, run.sweep_dir, write_report(run.sweep_dir)))
    print(f"total {time.perf_counter() - started:.0f} s")
    exit_if_nothing_completed(table, run.sweep_dir, "compare", table["point"].isin(run.points()))


def model_name(baseline: str, variant: str | None, scale: dict[str, Any]) -> str:
    """The measured model's name: efficientnet_b0 + b3 → efficientnet_b3, efficientnet_lite0 + b3 →
    efficientnet_lite3 (any other baseline + b3 → name-b3), then how it was scaled beyond that: phi1,
    or w2, d1.5, r1.2 for one dimension at a time."""
    name = baseline
    if variant and baseline.endswith("_b0"):
        name = baseline[:-2] + variant
    elif variant and baseline.endswith("_lite0"):  # variants b1…b4 of Lite are Lite1…Lite4
        name = baseline[:-1] + variant[1:]
    elif variant:
        name = f"{baseline}-{variant}"
    tags = {"phi": "phi", "width": "w", "depth": "d", "resolution": "r"}
    scaled = [f"{tag}{float(scale[key]):g}" for key, tag in tags.items()
              if scale.get(key) is not None and (key == "phi" or float(scale[key]) != 1)]
    return "-".join([name, *scaled])


def _device_label(device: str) -> str:
    """`cpu, 2 threads`: a CPU's latency depends on how many threads the forward pass ran on."""
    import torch

    return f"{device}, {torch.get_num_threads()} threads" if device == "cpu" else device


def _print_table(rows: list[dict[str, Any]], device: str, batch: int, human) -> None:
    from effscale.results import fixed_width, megabytes

    headers = ["model", "res", "width", "depth", "params", "MACs", "FLOPs", "activations",
               f"peak train MB (b={batch})", "latency ms"]
    if any(r["latency_ms"] is not None for r in rows):
        headers[-1] += f" ({_device_label(device)})"
    body = [[
        r["name"], str(r["resolution"]), f"{r['width_mult']:.3g}", f"{r['depth_mult']:.3g}",
        f"{r['params']:,}", human(r["macs"]), human(r["flops"]), human(r["activations"]),
        megabytes(r["peak_mem_mb"]),
        "–" if r["latency_ms"] is None else
        "out of memory" if math.isinf(r["latency_ms"]) else f"{r['latency_ms']:.1f}",
    ] for r in rows]
    print(fixed_width(headers, body, left=1))


def print_help(command: str, overrides: list[str]) -> None:
    """List the config groups and their options, then the composed config."""
    cfg = compose(command, overrides, hydra=True)
    groups = [g for g in reversed(list(cfg.hydra.runtime.choices)) if not g.startswith("hydra")]  # defaults order
    if command in ("search", "compare") and "sweep" not in groups:
        groups.append("sweep")  # a preset added with +sweep=…
    print(f"effscale {command} [overrides...]\n\nconfig groups (choose with group=option):")
    groups = [g for g in groups if g not in IGNORED_BY.get(command, ())]
    for group, options in options_on_search_path(command, overrides, groups).items():
        if options:
            print(f"  {group:9s} {', '.join(options)}")
    with open_dict(cfg):
        for key in ("hydra", *IGNORED_BY.get(command, ())):
            del cfg[key]
    print("\ncomposed config:\n")
    print(OmegaConf.to_yaml(cfg))


# Keys of the shared config a command does not read: setting one is a mistake, said in one line.
IGNORED_BY = {"finetune": ("baseline", "scale", "variant")}


def refuse_ignored(command: str, overrides: list[str]) -> None:
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] in IGNORED_BY.get(command, ()):
            raise UserError(f"{override}: effscale {command} does not read {key.split('.')[0]} (the architecture "
                            "is the weights' own, finetune.weights; the input size is data.resolution)")


def finetune(overrides: list[str]) -> None:
    refuse_ignored("finetune", overrides)
    cfg = load("finetune", overrides)

    from effscale.finetune import finetune as fit

    result = fit(cfg)
    print(f"val accuracy, new classifier on the frozen network: {result['val_acc_head']:.4f}")
    if "val_acc_all" in result:
        print(f"val accuracy, after training everything:            {result['val_acc_all']:.4f}")
    if result["test_acc"] is None:
        print("test accuracy: – (no test/ folder under data.root; the validation images were all that was held out)")
    else:
        print(f"test accuracy: {result['test_acc']:.4f}")
    print(f"checkpoint: {result['checkpoint']}  (effscale predict IMAGE --weights {result['checkpoint']})")
