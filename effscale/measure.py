"""Measure a built ConvNet before any training: params, MACs, activations, memory, latency.

Counting runs on PyTorch's meta device: modules and tensors carry shapes but no storage, so a
B7 at 600 px is "run" in well under a second with no memory, and a search can afford to measure
hundreds of candidates. Only latency, and peak memory measured on a CUDA device (`peak_on_device`),
need the real device; peak memory is otherwise estimated from the same shapes.

Units follow the paper: "FLOPs" there are multiply-adds; we report `macs` and `flops` = 2·MACs.

Speed, because a search measures every grid point before training any (`benchmarks/measure_candidates.py`
times it against a training trial): one training forward pass counts MACs, activations and the bytes
autograd saves (`_CountingPass`); batch norm, whose meta kernel is a Python decomposition (~10 ms a
call), runs shape-only and saves what the real one saves; the other common ops, whose meta kernels are
Python references too, run once per distinct call and are replayed after, since a grid repeats the same
blocks at the same shapes many times over, and so are whole blocks of effscale's builder; `build_on_meta`
skips initialising values that meta tensors do not have; and `measure_tables` builds one model per
architecture and counts it once per input size.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import re
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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

    def cost_columns(self) -> dict[str, Any]:
        """What a results row (a search's candidate, a comparison's model) records of the cost."""
        return {key: getattr(self, key) for key in COST_COLUMNS}


# The results-table columns a measurement fills.
COST_COLUMNS = ("resolution", "params", "macs", "flops", "activations", "peak_mem_mb", "latency_ms")


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


def _meta_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-5):
    """F.batch_norm's signature, for `_MetaBatchNorm`."""
    return _MetaBatchNorm.apply(input, weight, bias, running_mean, running_var)


# Ops whose meta kernels are Python references (0.1–0.7 ms a call) and which a counting pass repeats with
# the same shapes many times over: in every block of a stage, and in every grid candidate of the same
# width and input size. `_CountingPass` runs each distinct call once and replays it after.
_F = nn.functional
_REPLAYED = frozenset({torch.conv2d, _F.linear, _F.silu, _F.relu, _F.relu6, _F.hardswish, _F.hardsigmoid,
                       torch.sigmoid, torch.Tensor.sigmoid, torch.Tensor.mul, torch.Tensor.add, torch.Tensor.add_,
                       _F.adaptive_avg_pool2d, _F.max_pool2d, _F.dropout})
# Layers whose outputs are activations (pycls's count) and whose multiply-adds are MACs.
_TRANSPOSED = frozenset({torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d})
_COUNTED = frozenset({torch.conv1d, torch.conv2d, torch.conv3d, _F.linear}) | _TRANSPOSED
# signature → (output, saved): output is ("input", i) for an in-place op, else (shape, stride, dtype);
# each saved tensor is ("input", i), ("output",) or ("new", bytes). None: never replayed.
_RECORDED: dict[tuple, tuple | None] = {}
_RECORDED_MAX = 100_000


class _ReplayedOutput(torch.autograd.Function):
    """A recorded op's output: shape only, attached to autograd (a leaf would refuse later in-place ops)."""

    @staticmethod
    def forward(ctx, shape, stride, dtype, *inputs):
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("a replayed op of a counting pass on the meta device; it has no backward")


class _CountingPass(TorchFunctionMode):
    """A training forward pass on meta tensors that counts as it goes and skips repeated work.

    - batch norm runs as `_MetaBatchNorm`;
    - every convolution and linear call adds its output elements to `activations`, and their
      multiply-adds to `macs` (other products, matmul or attention, only `measure_model` counts);
    - an op in `_REPLAYED` whose signature (shapes, strides, dtypes, requires_grad, which inputs are
      the same tensor, the other arguments, grad mode) was recorded before is replayed: an empty output
      of the recorded shape, and `pack`, the pass's saved-tensor hook, called with the tensors the real
      op saved — the same inputs, its output, or new tensors of the same size;
    - a block (`block`) met before with the same input is replayed likewise, with its MACs and
      activations: one call in place of its dozen or so modules and ops.

    `pack` keeps every storage autograd saves once, but for `held` ones (weights, buffers and the input
    batch, which a training step holds anyway): `saved_bytes` is what the pass adds to memory.
    """

    def __init__(self, held: set[int] | frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.held = held
        # Each storage once, held until the count is done: autograd keeps what it saves alive, but a
        # replayed op's saved tensors have no graph to keep them, and a freed storage's address can come back.
        self.storages: dict[int, torch.UntypedStorage] = {}
        self.macs = self.activations = 0
        self._blocks_saved: list[list[torch.Tensor]] = []  # what each block being recorded saved so far

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in self.held:
            self.storages[storage._cdata] = storage
            for saved in self._blocks_saved:
                saved.append(tensor)
        return tensor

    @property
    def saved_bytes(self) -> int:
        return sum(storage.nbytes() for storage in self.storages.values())

    def block(self, block: _Block, x: torch.Tensor) -> torch.Tensor:
        """`block.forward(x)`, or its replay: a block's output shape, counts and saved tensors follow
        from its architecture, its mode, whether it trains and its input's shape."""
        key = block.signature(x)
        recorded = _RECORDED.get(key) if key is not None else None
        if recorded:
            replay, macs, activations = recorded
            self.macs += macs
            self.activations += activations
            # The output needs a gradient when the block trains, whether or not its input does.
            return self._replay(replay, [x] if block.trainable is None else [x, block.trainable])
        saved: list[torch.Tensor] = []
        macs, activations = self.macs, self.activations
        self._blocks_saved.append(saved)
        try:
            out = block.forward(x)
        finally:
            self._blocks_saved.pop()
        replay = _recording(out, _distinct(saved), [x]) if key is not None else None
        if replay is not None and len(_RECORDED) < _RECORDED_MAX:
            _RECORDED[key] = replay, self.macs - macs, self.activations - activations
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _F.batch_norm and args[0].is_meta:
            run = _meta_batch_norm
        elif func in _REPLAYED:
            run = func
        elif func in _COUNTED:  # convolutions other than 2-d ones, as they are (no model of effscale's has them)
            out = func(*args, **kwargs)
            self._count(func, args, kwargs, out)
            return out
        else:
            return func(*args, **kwargs)
        inputs: list[torch.Tensor] = []
        key = _signature(func, args, kwargs, inputs)
        recorded = _RECORDED.get(key) if key is not None else None
        out = self._replay(recorded, inputs) if recorded else self._record(run, args, kwargs, key, inputs)
        if func in _COUNTED:
            self._count(func, args, kwargs, out)
        return out

    def _count(self, func, args, kwargs, out: torch.Tensor) -> None:
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        self.activations += out.numel()
        # Each output element of a convolution or linear layer is a dot product over in_channels/groups·k…
        # weights; each input element of a transposed convolution meets out_channels/groups·k… of them.
        self.macs += (args[0] if func in _TRANSPOSED else out).numel() * math.prod(weight.shape[1:])

    def _replay(self, recorded: tuple, inputs: list[torch.Tensor]) -> torch.Tensor:
        output, saved = recorded
        out = inputs[output[1]] if output[0] == "input" else _ReplayedOutput.apply(*output, *inputs)
        for what in saved:
            self.pack(inputs[what[1]] if what[0] == "input" else out if what[0] == "output"
                      else torch.empty(what[1], dtype=torch.uint8, device="meta"))
        return out

    def _record(self, func, args, kwargs, key: tuple | None, inputs: list[torch.Tensor]) -> Any:
        saved: list[torch.Tensor] = []

        def keep(tensor: torch.Tensor) -> torch.Tensor:
            saved.append(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            out = func(*args, **kwargs)
        for tensor in saved:
            self.pack(tensor)
        if key is None or len(_RECORDED) >= _RECORDED_MAX:
            return out
        _RECORDED[key] = _recording(out, saved, inputs)
        return out


_PLAIN = frozenset({type(None), bool, int, float, str, torch.dtype})


def _signature(func, args, kwargs, inputs: list[torch.Tensor]) -> tuple | None:
    """What decides a call's output shape and saved tensors; None if an argument is not plain data.
    `inputs` collects the call's distinct tensors, in order."""
    index: dict[int, int] = {}
    try:
        return (func, torch.is_grad_enabled(), _part(args, index, inputs),
                tuple((k, _part(v, index, inputs)) for k, v in sorted(kwargs.items())))
    except TypeError:
        return None


def _part(value: Any, index: dict[int, int], inputs: list[torch.Tensor]) -> Any:
    """One argument of `_signature`. A module-level function, not a closure: a recursive closure is a
    reference cycle, and each would keep the call's tensors alive until the cycle collector ran."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is tuple or kind is list or kind is torch.Size:
        return tuple([_part(item, index, inputs) for item in value])
    if isinstance(value, torch.Tensor) and value.is_meta:
        same = index.setdefault(id(value), len(inputs))
        if same == len(inputs):
            inputs.append(value)
        return same, value.shape, value.stride(), value.dtype, value.requires_grad
    raise TypeError


_DROP_PROBABILITY = re.compile(r"StochasticDepth\(p=([^,]+),")


def _blocks_of(model: nn.Module) -> list[nn.Module]:
    """The blocks of effscale's builder (models/blocks.py) in `model`."""
    from effscale.models.blocks import BLOCKS

    kinds = tuple(BLOCKS.values())
    return [m for m in model.modules() if isinstance(m, kinds)]


def _architecture(block: nn.Module) -> tuple:
    """What a block computes: its repr, which names every layer and setting, and its plain attributes
    (MBConv's use_res_connect); stochastic depth's drop probability, which grows with the block's index
    in the network, only as zero or not: in training mode any p > 0 runs the same ops on the same shapes."""
    settings = sorted((k, v) for k, v in vars(block).items() if not k.startswith("_") and type(v) in _PLAIN)
    text = _DROP_PROBABILITY.sub(lambda p: f"StochasticDepth(p{'>' if float(p[1]) > 0 else '='}0,", repr(block))
    return type(block), text, tuple(settings)


class _Block:
    """A block of a model being counted, as `_CountingPass.block` keys it, read when the count starts:
    its `architecture`, its mode, and `trainable`, one of its parameters that requires a gradient."""

    def __init__(self, module: nn.Module, architecture: tuple) -> None:
        self.forward = module.forward
        self.training = module.training
        self.architecture = architecture
        self.trainable = next((p for p in module.parameters() if p.requires_grad), None)

    def signature(self, x: Any) -> tuple | None:
        """What decides the block's output, counts and saved tensors; None unless `x` is a meta tensor."""
        if not isinstance(x, torch.Tensor) or not x.is_meta:
            return None
        return (*self.architecture, self.training, self.trainable is not None, torch.is_grad_enabled(), x.shape,
                x.stride(), x.dtype, x.requires_grad)


def _distinct(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """One tensor per storage, the first: a block saves its input, or one of its own tensors, in several ops."""
    seen: dict[int, torch.Tensor] = {}
    for tensor in tensors:
        seen.setdefault(tensor.untyped_storage()._cdata, tensor)
    return list(seen.values())


@contextmanager
def _blocks_replayed(counting: _CountingPass, facts: _ModelFacts) -> Iterator[None]:
    """The blocks of effscale's builder in the model `facts` were read from, called through
    `counting.block` for the `with` block; a forward set on a block instance before is put back after."""
    blocks = [module for module, _ in facts.blocks]
    own = [m.__dict__.get("forward") for m in blocks]
    for module, architecture in facts.blocks:
        module.forward = partial(counting.block, _Block(module, architecture))
    try:
        yield
    finally:
        for module, forward in zip(blocks, own):
            del module.forward
            if forward is not None:
                module.forward = forward


def _recording(out: Any, saved: list[torch.Tensor], inputs: list[torch.Tensor]) -> tuple | None:
    """How to replay a call that returned `out` and saved `saved`, or None when it cannot be."""
    if not isinstance(out, torch.Tensor):
        return None
    storage_of = {t.untyped_storage()._cdata: i for i, t in reversed(list(enumerate(inputs)))}
    out_storage = out.untyped_storage()._cdata
    same = [i for i, t in enumerate(inputs) if t is out]
    if same:
        output: tuple = ("input", same[0])
    elif out_storage in storage_of:
        return None  # a view of an input
    else:
        output = (tuple(out.shape), out.stride(), out.dtype)
    kept: list[tuple] = []
    for tensor in saved:
        storage = tensor.untyped_storage()
        if storage._cdata in storage_of:
            kept.append(("input", storage_of[storage._cdata]))
        elif storage._cdata == out_storage:
            kept.append(("output",))
        else:
            kept.append(("new", storage.nbytes()))
    return output, tuple(kept)


# In-place ops that only set values: PyTorch's modules initialise their parameters and buffers in their
# constructors, and on the meta device there are no values to set (a third of building a model there).
_VALUE_ONLY = frozenset({"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                         "xavier_uniform_", "xavier_normal_", "zeros_", "ones_", "constant_", "zero_", "fill_"})


class _NoValuesOnMeta(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", None) in _VALUE_ONLY and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[dict[str, Any]], nn.Module], table: dict[str, Any]) -> nn.Module:
    """`build(table)` on the meta device, skipping the initialisation of values it does not have. A
    constructor that computes with tensor values (torchvision's RegNet) cannot run there: it is built
    on the CPU and moved."""
    try:
        with torch.device("meta"), _NoValuesOnMeta():
            return build(table)
    except NotImplementedError:  # "Cannot copy out of meta tensor; no data!"
        return build(table).to("meta")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class _ModelFacts:
    """What measuring reads of a model, once per model: a grid's model is counted at several input
    sizes, and every walk over a deep model's modules costs (a block's repr most, ~0.1 ms). A model is
    not expected to change between the counts it is read for."""
    params: int
    param_bytes: int
    storages: frozenset[int]  # of the parameters and buffers, which a training step holds anyway
    blocks: tuple[tuple[nn.Module, tuple], ...]  # each block of effscale's builder, with its `_architecture`

    @classmethod
    def of(cls, model: nn.Module) -> _ModelFacts:
        params = list(model.parameters())
        return cls(params=sum(p.numel() for p in params),
                   param_bytes=sum(p.numel() * p.element_size() for p in params),
                   storages=frozenset(t.untyped_storage()._cdata for t in [*params, *model.buffers()]),
                   blocks=tuple((block, _architecture(block)) for block in _blocks_of(model)))


def count_macs_and_activations(model: nn.Module, resolution: int, in_channels: int = 3) -> tuple[int, int]:
    """MACs of one image's forward pass, and its activations: the elements every conv and linear layer
    outputs (the count of Radosavovic et al., "Designing Network Design Spaces", 2020, and pycls)."""
    counting = _CountingPass()
    with _modules_in_mode(model, training=False), torch.no_grad(), counting:
        model(_input_like(model, 1, in_channels, resolution))
    return counting.macs, counting.activations


@contextmanager
def _modules_in_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Every module in training (or eval) mode for the block, as before after it. A model built to be
    measured is already in training mode, and model.train() visits every module, so only when needed."""
    switch = any(m.training != training for m in model.modules())
    was_training = model.training
    if switch:
        model.train(training)
    try:
        yield
    finally:
        if switch:
            model.train(was_training)


def _peak_train_mb(param_bytes: int, saved_bytes: int, resolution: int, batch_size: int, in_channels: int,
                   optimizer: str) -> float:
    """Peak memory of one training step, estimated from shapes: weights + gradients + optimizer state
    + the activations autograd saves (`saved_bytes`, weights and input not among them) + the input
    batch. Within about 10–20 % of CUDA's measured peak (autograd's temporaries and the allocator's
    rounding are not counted)."""
    states = 2 + OPTIMIZER_STATES.get(optimizer, 2)
    input_bytes = batch_size * in_channels * resolution**2 * 4
    return (param_bytes * states + saved_bytes + input_bytes) / 2**20


def cuda_peak_train_mb(build: Callable[[], nn.Module], resolution: int, batch_size: int, in_channels: int = 3,
                       device: str = "cuda", optimizer: str = "sgd") -> float:
    """Measured peak allocated memory of a training step (fp32) with `optimizer` on a CUDA device, the
    second one: the optimizer's state, made by the first step, is held through every step after it.
    Infinite when a step does not fit in the device's memory at all."""
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    model = opt = x = None
    try:
        model = build().to(device).to(memory_format=torch.channels_last)
        params = model.parameters()
        opt = (torch.optim.SGD(params, lr=0.01, momentum=0.9) if optimizer == "sgd"
               else torch.optim.AdamW(params, lr=1e-3))
        x = torch.randn(batch_size, in_channels, resolution, resolution, device=device).to(
            memory_format=torch.channels_last)  # one copy of the batch, as training keeps
        for _ in range(2):
            torch.cuda.reset_peak_memory_stats(device)
            model(x).float().logsumexp(1).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    except torch.OutOfMemoryError:
        return math.inf  # over any memory budget: the candidate is infeasible, not the search broken
    finally:
        del model, opt, x
        torch.cuda.empty_cache()


def memory_mb(device: str) -> float:
    """The memory a model on `device` can have: a GPU's total, or what the operating system says is available."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[1] / 2**20
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) / 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):  # not Linux
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20


def least_memory_mb(network: nn.Module, in_channels: int, resolution: int, batch_size: int) -> float:
    """A floor under the memory of any forward pass or training step: the weights, the input batch, and
    the largest feature map of a forward pass in 16 bits, which even a frozen backbone under bf16 holds
    at once (from shapes, on the meta device). A full step in fp32 needs several times more."""
    meta = copy.deepcopy(network).to("meta").eval()
    largest = 0

    def seen(module: nn.Module, args: Any, out: Any) -> None:
        nonlocal largest
        if isinstance(out, torch.Tensor):
            largest = max(largest, out[0].numel())

    hooks = [m.register_forward_hook(seen) for m in meta.modules() if not any(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty(1, in_channels, resolution, resolution, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    weights = sum(p.numel() * p.element_size() for p in network.parameters())
    return (weights + batch_size * (in_channels * resolution**2 * 4 + largest * 2)) / 2**20


def latency_ms(model: nn.Module, resolution: int, device: str = "cpu", in_channels: int = 3,
               batch_size: int = 1, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of an inference forward pass on `device` (channels_last, no grad); infinite
    when the pass cannot fit in the device's memory (over any latency budget, as `cuda_peak_train_mb`)."""
    if least_memory_mb(model, in_channels, resolution, batch_size) > memory_mb(device):
        return math.inf  # the kernel would stop the process before an allocation failed
    try:
        return _latency_ms(model, resolution, device, in_channels, batch_size, repeats, warmup)
    except RuntimeError as exc:  # torch.OutOfMemoryError on CUDA; the CPU allocator's is a RuntimeError
        if not (isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)):
            raise
        return math.inf
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def _latency_ms(model: nn.Module, resolution: int, device: str, in_channels: int, batch_size: int, repeats: int,
                warmup: int) -> float:
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


def count_training_forward(model: nn.Module, resolution: int, batch_size: int, in_channels: int = 3,
                           facts: _ModelFacts | None = None) -> tuple[int, int, int]:
    """One training-mode forward pass of a batch on the model's (meta) device, counting three things at
    once: MACs and activations per image (as `count_macs_and_activations`) and the bytes autograd
    saves for the batch. tests/test_measure.py checks all three against
    FlopCounterMode, module hooks and PyTorch's own meta kernels on every baseline."""
    # Weights, buffers and the input batch are saved too, but a training step holds them anyway:
    # `_peak_train_mb` counts them once, apart.
    x = _input_like(model, batch_size, in_channels, resolution)
    facts = facts or _ModelFacts.of(model)
    counting = _CountingPass(held=facts.storages | {x.untyped_storage()._cdata})
    with _modules_in_mode(model, training=True), _blocks_replayed(counting, facts):
        with torch.autograd.graph.saved_tensors_hooks(counting.pack, lambda t: t), counting:
            model(x)
    return counting.macs // batch_size, counting.activations // batch_size, counting.saved_bytes


def measure_table(table: dict[str, Any], build: Callable[[dict[str, Any]], nn.Module], *, in_channels: int = 3,
                  batch_size: int = 32, device: str = "cpu", memory: bool = True, latency: bool = False,
                  optimizer: str = "sgd", name: str | None = None, peak_on_device: bool = True) -> Measurement:
    """Measure the model a scaled stage table describes. `build(table)` must return the network.
    On CUDA, peak memory is that of real training steps (`peak_on_device`, `cuda_peak_train_mb`) or,
    with peak_on_device=False, the shape estimate used on CPU."""
    meta_model = build_on_meta(build, table)
    return _measure_built(meta_model, _ModelFacts.of(meta_model), table, build, in_channels=in_channels,
                          batch_size=batch_size, device=device, memory=memory, latency=latency, optimizer=optimizer,
                          name=name, peak_on_device=peak_on_device)


def measure_model(model: nn.Module, resolution: int, *, in_channels: int = 3, batch_size: int = 32,
                  device: str = "cpu", memory: bool = True, latency: bool = False, optimizer: str = "sgd",
                  name: str = "model") -> Measurement:
    """Measure any network already built (yours, torchvision's, timm's) on square `resolution` inputs,
    as `measure_table` measures effscale's; `model` itself is left as it was. MACs are PyTorch's own
    count (FlopCounterMode, halved) of an inference pass, which sees every convolution, matrix product
    and attention inside whatever the model calls; activations and peak training memory come from the
    same training pass as effscale's, activations being the outputs of the convolutions and linear layers
    it calls (not the projections inside a fused op such as attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta_model = copy.deepcopy(model).to("meta")
    with _modules_in_mode(meta_model, training=False), torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta_model(_input_like(meta_model, 1, in_channels, resolution))
    measured = _measure_built(meta_model, _ModelFacts.of(meta_model), {"resolution": resolution},
                              lambda table: copy.deepcopy(model), in_channels=in_channels, batch_size=batch_size,
                              device=device, memory=memory, latency=latency, optimizer=optimizer, name=name)
    macs = counter.get_total_flops() // 2
    return replace(measured, macs=macs, flops=2 * macs)


# Keys `scale_stage_table` records about how a table was scaled; the builder reads none of them, and
# the input size is not part of the architecture.
_NOT_ARCHITECTURE = ("resolution", "resolution_mult", "width_mult", "depth_mult")


def architecture_key(table: dict[str, Any]) -> str:
    """The network a stage table builds, as a string: two tables have the same key exactly when they
    build the same network, whatever multipliers produced them and whatever their input size."""
    return json.dumps({k: v for k, v in table.items() if k not in _NOT_ARCHITECTURE}, sort_keys=True, default=str)


def measure_tables(tables: Sequence[dict[str, Any]], build: Callable[[dict[str, Any]], nn.Module],
                   **options: Any) -> list[Measurement]:
    """`measure_table` for each table (same keyword options). Tables that differ only in input size
    share one model built on the meta device, and tables with the same architecture and input size
    share one count: a compound grid holds many points whose rounded depth, width and resolution
    coincide, and building and counting are what measuring costs."""
    built: dict[str, tuple[nn.Module, _ModelFacts]] = {}
    counted: dict[tuple[str, int], Measurement] = {}
    out = []
    with _collector_paused():
        for table in tables:
            key = architecture_key(table)
            same = counted.get((key, int(table["resolution"])))
            if same is None:
                if key not in built:
                    model = build_on_meta(build, table)
                    built[key] = model, _ModelFacts.of(model)
                same = counted[key, int(table["resolution"])] = _measure_built(*built[key], table, build, **options)
            out.append(replace(same, name=options.get("name") or table.get("name", "model"),
                               width_mult=float(table.get("width_mult", 1.0)),
                               depth_mult=float(table.get("depth_mult", 1.0)),
                               resolution_mult=float(table.get("resolution_mult", 1.0))))
    return out


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off for the block. Building and counting models allocate hundreds of
    thousands of short-lived objects (modules, meta tensors, autograd nodes) that reference counting
    frees; the collector's passes over them were a quarter of the time measuring a grid took."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _measure_built(meta_model: nn.Module, facts: _ModelFacts, table: dict[str, Any],
                   build: Callable[[dict[str, Any]], nn.Module], *, in_channels: int = 3, batch_size: int = 32,
                   device: str = "cpu", memory: bool = True, latency: bool = False, optimizer: str = "sgd",
                   name: str | None = None, peak_on_device: bool = True) -> Measurement:
    resolution = int(table["resolution"])
    on_device = memory and peak_on_device and device.startswith("cuda")
    count_batch = batch_size if memory and not on_device else 1
    macs, activations, saved_bytes = count_training_forward(meta_model, resolution, count_batch, in_channels, facts)
    peak = None
    if memory:
        if on_device:
            peak = cuda_peak_train_mb(lambda: build(table), resolution, batch_size, in_channels, device, optimizer)
        else:
            peak = _peak_train_mb(facts.param_bytes, saved_bytes, resolution, batch_size, in_channels, optimizer)
    lat = latency_ms(build(table), resolution, device, in_channels) if latency else None
    return Measurement(
        name=name or table.get("name", "model"),
        params=facts.params,
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


def human(n: float) -> str:
    """12_345_678 → '12.35M' (for tables people read)."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:g}" if not math.isnan(n) else "–"
