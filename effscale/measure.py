"""Measure a built ConvNet before any training: params, MACs, activations, memory, latency.

Counting runs on PyTorch's meta device: modules and tensors carry shapes but no storage, so a
B7 at 600 px is "run" in well under a second with no memory, and a search can afford to measure
hundreds of candidates. Only latency, and peak memory measured on a CUDA device (`peak_on_device`),
need the real device; peak memory is otherwise estimated from the same shapes.

Units follow the paper: "FLOPs" there are multiply-adds; we report `macs` and `flops` = 2·MACs.

Speed, because a search measures every grid point before training any: PyTorch's meta kernel for
batch norm is a Python decomposition (~10 ms a call), so counting swaps in a shape-only batch norm that
saves what the real one saves; `measure_table` counts MACs, activations and saved bytes in one training
forward pass; `measure_tables` builds one model per architecture and counts it at each resolution.
`benchmarks/measure_candidates.py` times it against a training trial.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

# Optimizer state per parameter, in parameter-sized tensors (SGD momentum: 1; Adam/AdamW: 2).
OPTIMIZER_STATES = {"sgd": 1, "adamw": 2, "adam": 2}


@dataclass
class Measurement:
    name: str
    params: int
    macs: int
    flops: int
    activations: int
    resolution: int
    width_mult: float
    depth_mult: float
    resolution_mult: float
    peak_mem_mb: float | None = None
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _MetaBatchNorm(torch.autograd.Function):
    """Batch norm on the meta device in one step. Saves, for autograd, the tensors aten's
    native_batch_norm saves (input, weight, running stats, and the per-channel mean and inverse std),
    so saved-activation counts are the same as with the real op."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var):
        # torch.empty, not empty_like: the meta device's empty_like is itself a Python reference (~0.3 ms)
        per_channel = (x.shape[1],) if x.dim() > 1 else (1,)
        stats = [torch.empty(per_channel, device=x.device, dtype=x.dtype) for _ in range(2)]
        ctx.save_for_backward(x, weight, running_mean, running_var, *stats)
        return torch.empty(x.shape, device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("shape-only batch norm for counting on the meta device; it has no backward")


class _ShapeOnlyBatchNorm(TorchFunctionMode):
    """Routes F.batch_norm on meta tensors to `_MetaBatchNorm`; everything else runs unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is nn.functional.batch_norm and args[0].is_meta:
            x, running_mean, running_var = args[0], args[1], args[2]
            weight, bias = kwargs.get("weight", args[3] if len(args) > 3 else None), \
                kwargs.get("bias", args[4] if len(args) > 4 else None)
            return _MetaBatchNorm.apply(x, weight, bias, running_mean, running_var)
        return func(*args, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs_and_activations(model: nn.Module, resolution: int, in_channels: int = 3) -> tuple[int, int]:
    """MACs of one image's forward pass, and its activations: the elements every conv and linear layer
    outputs (the count of Radosavovic et al., "Designing Network Design Spaces", 2020, and pycls)."""
    activations = 0

    def count(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal activations
        activations += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    x = _input_like(model, 1, in_channels, resolution)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, _ShapeOnlyBatchNorm():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return counter.get_total_flops() // 2, activations


def saved_activation_bytes(model: nn.Module, resolution: int, batch_size: int, in_channels: int = 3) -> int:
    """Bytes autograd keeps from a training forward pass for the backward pass (each storage once)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage._cdata] = storage.nbytes()
        return tensor

    was_training = model.training
    model.train()
    try:
        x = _input_like(model, batch_size, in_channels, resolution)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _ShapeOnlyBatchNorm():
            model(x)
    finally:
        model.train(was_training)
    return sum(storages.values())


def estimate_peak_train_mb(model: nn.Module, resolution: int, batch_size: int, in_channels: int = 3,
                           optimizer: str = "sgd") -> float:
    """Peak memory of one training step, estimated from shapes: weights + gradients + optimizer
    state + the activations autograd saves + the input batch. Matches CUDA's measured peak within
    about 10–20 % (autograd's temporaries and allocator rounding are not counted)."""
    saved = saved_activation_bytes(model, resolution, batch_size, in_channels)
    return _peak_train_mb(model, saved, resolution, batch_size, in_channels, optimizer)


def _peak_train_mb(model: nn.Module, saved_bytes: int, resolution: int, batch_size: int, in_channels: int,
                   optimizer: str) -> float:
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    states = 2 + OPTIMIZER_STATES.get(optimizer, 2)
    input_bytes = batch_size * in_channels * resolution**2 * 4
    return (param_bytes * states + saved_bytes + input_bytes) / 2**20


def cuda_peak_train_mb(build: Callable[[], nn.Module], resolution: int, batch_size: int, in_channels: int = 3,
                       device: str = "cuda") -> float:
    """Measured peak allocated memory of one SGD training step on a CUDA device."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    model = build().to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, in_channels, resolution, resolution, device=device).to(memory_format=torch.channels_last)
    model(x).float().logsumexp(1).mean().backward()
    opt.step()
    peak = torch.cuda.max_memory_allocated(device) - base
    del model, opt, x
    torch.cuda.empty_cache()
    return peak / 2**20


def latency_ms(model: nn.Module, resolution: int, device: str = "cpu", in_channels: int = 3,
               batch_size: int = 1, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of an inference forward pass on `device` (channels_last, no grad)."""
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, in_channels, resolution, resolution, device=device).to(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def count_training_forward(model: nn.Module, resolution: int, batch_size: int,
                           in_channels: int = 3) -> tuple[int, int, int]:
    """One training-mode forward pass of a batch on the model's (meta) device, counting three things at
    once: MACs and activations per image (as `count_macs_and_activations`) and the bytes autograd
    saves for the batch (as `saved_activation_bytes`).

    MACs are summed over the nn.Conv2d and nn.Linear modules, where every multiply-add of the families
    built here lies; module hooks cost far less than FlopCounterMode's per-op dispatch, and
    tests/test_measure.py checks the two agree on every baseline.
    """
    macs = activations = 0
    storages: dict[int, int] = {}

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs, activations
        activations += output.numel()
        # conv: each output element is a dot product over (in_channels / groups)·kh·kw weights
        macs += output.numel() * (module.weight[0].numel() if isinstance(module, nn.Conv2d) else module.in_features)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage._cdata] = storage.nbytes()
        return tensor

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.train()
    try:
        x = _input_like(model, batch_size, in_channels, resolution)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _ShapeOnlyBatchNorm():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return macs // batch_size, activations // batch_size, sum(storages.values())


def measure_table(table: dict[str, Any], build: Callable[[dict[str, Any]], nn.Module], *, in_channels: int = 3,
                  batch_size: int = 32, device: str = "cpu", memory: bool = True, latency: bool = False,
                  optimizer: str = "sgd", name: str | None = None, peak_on_device: bool = True) -> Measurement:
    """Measure the model a scaled stage table describes. `build(table)` must return the network.
    On CUDA, peak memory is one real training step's (`peak_on_device`, about 0.4 s a model on an
    H100) or, with peak_on_device=False, the shape estimate used on CPU."""
    with torch.device("meta"):
        meta_model = build(table)
    return _measure_built(meta_model, table, build, in_channels=in_channels, batch_size=batch_size, device=device,
                          memory=memory, latency=latency, optimizer=optimizer, name=name, peak_on_device=peak_on_device)


# Keys `scale_stage_table` records about how a table was scaled; the builder reads none of them, and
# the input size is not part of the architecture.
_NOT_ARCHITECTURE = ("resolution", "resolution_mult", "width_mult", "depth_mult")


def measure_tables(tables: Sequence[dict[str, Any]], build: Callable[[dict[str, Any]], nn.Module],
                   **options: Any) -> list[Measurement]:
    """`measure_table` for each table (same keyword options). Tables that differ only in input size
    share one model built on the meta device, and tables with the same architecture and input size
    share one count: a compound grid holds many points whose rounded depth, width and resolution
    coincide, and building and counting are what measuring costs."""
    built: dict[str, nn.Module] = {}
    counted: dict[tuple[str, int], Measurement] = {}
    out = []
    for table in tables:
        key = json.dumps({k: v for k, v in table.items() if k not in _NOT_ARCHITECTURE}, sort_keys=True, default=str)
        same = counted.get((key, int(table["resolution"])))
        if same is None:
            if key not in built:
                with torch.device("meta"):
                    built[key] = build(table)
            same = counted[key, int(table["resolution"])] = _measure_built(built[key], table, build, **options)
        out.append(replace(same, name=options.get("name") or table.get("name", "model"),
                           width_mult=float(table.get("width_mult", 1.0)), depth_mult=float(table.get("depth_mult", 1.0)),
                           resolution_mult=float(table.get("resolution_mult", 1.0))))
    return out


def _measure_built(meta_model: nn.Module, table: dict[str, Any], build: Callable[[dict[str, Any]], nn.Module], *,
                   in_channels: int = 3, batch_size: int = 32, device: str = "cpu", memory: bool = True,
                   latency: bool = False, optimizer: str = "sgd", name: str | None = None,
                   peak_on_device: bool = True) -> Measurement:
    resolution = int(table["resolution"])
    on_device = memory and peak_on_device and device.startswith("cuda")
    count_batch = batch_size if memory and not on_device else 1
    macs, activations, saved_bytes = count_training_forward(meta_model, resolution, count_batch, in_channels)
    peak = None
    if memory:
        if on_device:
            peak = cuda_peak_train_mb(lambda: build(table), resolution, batch_size, in_channels, device)
        else:
            peak = _peak_train_mb(meta_model, saved_bytes, resolution, batch_size, in_channels, optimizer)
    lat = latency_ms(build(table), resolution, device, in_channels) if latency else None
    return Measurement(
        name=name or table.get("name", "model"),
        params=count_params(meta_model),
        macs=int(macs),
        flops=int(2 * macs),
        activations=int(activations),
        resolution=resolution,
        width_mult=float(table.get("width_mult", 1.0)),
        depth_mult=float(table.get("depth_mult", 1.0)),
        resolution_mult=float(table.get("resolution_mult", 1.0)),
        peak_mem_mb=None if peak is None else round(peak, 1),
        latency_ms=None if lat is None else round(lat, 3),
    )


def _input_like(model: nn.Module, batch: int, channels: int, resolution: int) -> torch.Tensor:
    param = next(model.parameters())
    return torch.empty(batch, channels, resolution, resolution, device=param.device, dtype=param.dtype)


def human(n: float, unit: str = "") -> str:
    """12_345_678 → '12.35M' (for tables people read)."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:g}{unit}" if not math.isnan(n) else "–"
