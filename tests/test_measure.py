"""The fast counting paths of measure.py give exactly the numbers of the plain meta-device ones."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effscale.measure import count_macs_and_activations, count_training_forward, measure_table, measure_tables
from effscale.models import build_model
from effscale.scaling import compound_grid, compound_multipliers, scale_stage_table, scaled_baseline
from effscale.weights import architecture

CONF = Path(__file__).resolve().parent.parent / "conf" / "baseline"
BASELINES = sorted(p.stem for p in CONF.glob("*.yaml"))


def baseline(name: str) -> dict:
    return yaml.safe_load((CONF / f"{name}.yaml").read_text())


def plain_counts(model: nn.Module, resolution: int, batch: int) -> tuple[int, int, int]:
    """MACs (FlopCounterMode) and activations per image, saved bytes of a batch: the reference, with
    PyTorch's own meta batch norm and two separate forward passes."""
    activations = 0

    def count(_m, _i, out):
        nonlocal activations
        activations += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, resolution, resolution, device="meta"))
    for hook in hooks:
        hook.remove()
    storages = {}
    x = torch.empty(batch, 3, resolution, resolution, device="meta")
    held = {t.untyped_storage()._cdata for t in [x, *model.parameters(), *model.buffers()]}

    def pack(t):
        if t.untyped_storage()._cdata not in held:
            storages[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return counter.get_total_flops() // 2, activations, sum(storages.values())


@pytest.mark.parametrize("name", BASELINES)
def test_one_pass_counts_equal_flop_counter_and_saved_tensors(name):
    table = scaled_baseline(baseline(name), {"phi": 1})
    res = 48
    with torch.device("meta"):
        model = build_model(table, 10)
    assert count_training_forward(model, res, 4) == plain_counts(model, res, 4)
    assert count_macs_and_activations(model, res) == plain_counts(model, res, 4)[:2]


@pytest.mark.parametrize("name", BASELINES)
def test_saved_bytes_grow_with_the_batch_and_leave_out_the_weights_a_step_holds_anyway(name):
    # The peak estimate adds weights, gradients and optimizer state apart: counted among the saved
    # tensors as well, they were a constant of the size of the weights in every batch's count.
    with torch.device("meta"):
        model = build_model(scaled_baseline(baseline(name), {}), 10)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    one, two = (count_training_forward(model, 32, batch)[2] for batch in (8, 16))
    assert 0 <= 2 * one - two < weights / 50  # what does not grow with the batch: BatchNorm's statistics


def test_grid_candidates_count_the_same_as_the_reference():
    base = baseline("efficientnet_b0") | {"resolution": 32}
    for p in compound_grid(step=0.1)[:6]:
        table = scale_stage_table(base, compound_multipliers(p.alpha, p.beta, p.gamma, 1))
        with torch.device("meta"):
            model = build_model(table, 10)
        assert count_training_forward(model, table["resolution"], 16) == plain_counts(model, table["resolution"], 16)


def test_measure_tables_shares_models_and_equals_measure_table_one_by_one():
    base = baseline("efficientnet_b0") | {"resolution": 32}
    # α = 1.05 and 1.1 give the same ceil(n·α) repeats: same architecture, different γ and input size
    tables = [scale_stage_table(base, compound_multipliers(p.alpha, p.beta, p.gamma, 1))
              for p in compound_grid((1.05, 1.1), (1.0, 1.2), step=0.05)]
    built = []

    def build(t):
        built.append(t["resolution"])
        return build_model(t, 10)

    together = measure_tables(tables, build, batch_size=16)
    assert len(built) == len(tables) // 2 and len({t["resolution"] for t in tables}) > len(built)
    assert together == [measure_table(t, lambda t: build_model(t, 10), batch_size=16) for t in tables]


def test_measure_tables_counts_a_repeated_architecture_and_size_once():
    base = baseline("efficientnet_b0") | {"resolution": 32}
    table = scale_stage_table(base, compound_multipliers(1.2, 1.1, 1.15, 1))
    twin = dict(table, width_mult=1.104)  # same channels after rounding: only the recorded multiplier differs
    calls = []

    def build(t):
        calls.append(t)
        return build_model(t, 10)

    first, second = measure_tables([table, twin], build, batch_size=8)
    assert len(calls) == 1
    assert second.width_mult == 1.104 and {**first.as_dict(), "width_mult": 1.104} == second.as_dict()


def test_a_candidate_whose_training_step_does_not_fit_on_the_gpu_costs_infinite_memory(monkeypatch):
    """Out of memory is over every memory budget: an INFEASIBLE row, not a search that stops."""
    from effscale import measure

    for name in ("empty_cache", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: 0)

    def too_big():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    assert measure.cuda_peak_train_mb(too_big, 224, 256, optimizer="adamw") == math.inf


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_peak_memory_on_cuda_is_read_from_a_step_that_holds_the_optimizers_state(monkeypatch, optimizer):
    """The first step makes the optimizer's state after its backward pass has freed the activations, so
    only the steps after it hold both: the peak is read from the second."""
    from effscale import measure

    optimizers, state_at_reset = [], []
    for kind in (torch.optim.SGD, torch.optim.AdamW):
        class Recorded(kind):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                optimizers.append(self)
        monkeypatch.setattr(torch.optim, kind.__name__, Recorded)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device: state_at_reset.append(sum(len(o.state) for o in optimizers)))
    for name in ("empty_cache", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: 0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    measure.cuda_peak_train_mb(lambda: model, 8, 2, device="cpu", optimizer=optimizer)
    assert state_at_reset[-1] == len(list(model.parameters())) and len(optimizers) == 1


@pytest.mark.parametrize("budget_mb, on_device", [(None, False), (4096, True)])
def test_a_search_measures_peak_memory_on_cuda_only_under_a_memory_budget(monkeypatch, budget_mb, on_device):
    from effscale import measure
    from effscale.budget import measure_options

    steps = []
    monkeypatch.setattr(measure, "cuda_peak_train_mb", lambda *args, **kw: steps.append(args) or 123.0)
    cfg = {"data": {"batch_size": 16}, "trainer": {"optimizer": "adamw"},
           "budget": {"max_peak_mem_mb": budget_mb, "max_latency_ms": None}}
    options = measure_options(cfg, "cuda", 3)
    assert options["peak_on_device"] is on_device and options["latency"] is False
    table = baseline("efficientnet_b0") | {"resolution": 32}
    cuda = measure_table(table, lambda t: build_model(t, 10), **options)
    estimate = measure_table(table, lambda t: build_model(t, 10), **(options | {"device": "cpu"}))
    assert len(steps) == int(on_device)
    assert cuda.peak_mem_mb == (123.0 if on_device else estimate.peak_mem_mb)
    assert {**cuda.as_dict(), "peak_mem_mb": 0} == {**estimate.as_dict(), "peak_mem_mb": 0}


def test_a_replayed_count_equals_the_recorded_one_and_the_reference():
    from effscale import measure

    for name in ("efficientnet_b0", "resnet50", "mobilenet_v2"):
        with torch.device("meta"):
            model = build_model(baseline(name) | {"resolution": 40}, 10)
        measure._RECORDED.clear()
        first = count_training_forward(model, 40, 4)
        recorded = len(measure._RECORDED)
        second = count_training_forward(model, 40, 4)  # every replayable call is replayed now
        assert recorded > 10 and len(measure._RECORDED) == recorded
        assert first == second == plain_counts(model, 40, 4)


def test_a_block_met_again_with_the_same_input_is_replayed_whole_whatever_its_drop_probability(monkeypatch):
    from effscale import measure
    from effscale.models.blocks import MBConv

    ran = []
    forward = MBConv.forward
    monkeypatch.setattr(MBConv, "forward", lambda self, x: ran.append(self) or forward(self, x))
    base = baseline("efficientnet_b0") | {"resolution": 40}  # stochastic depth 0.2, growing over the blocks
    tables = [scale_stage_table(base, compound_multipliers(alpha, 1.0, 1.0, 1)) for alpha in (1.0, 1.3)]
    with torch.device("meta"):
        b0, deeper = (build_model(table, 10) for table in tables)
    measure._RECORDED.clear()
    counts = [count_training_forward(b0, 40, 4)]
    assert len(ran) == 12  # of 16 blocks: the same block on the same input is replayed within one pass too
    counts.append(count_training_forward(b0, 40, 4))
    assert len(ran) == 12  # every block replayed whole
    # Deeper: more blocks, each with another drop probability; all but the new ones are replayed.
    ran.clear()
    counts.append(count_training_forward(deeper, 40, 4))
    blocks = sum(isinstance(m, MBConv) for m in deeper.modules())
    assert blocks > 16 and 0 < len(ran) < blocks - 10
    assert counts == [plain_counts(b0, 40, 4)] * 2 + [plain_counts(deeper, 40, 4)]


def test_a_replayed_block_needs_a_gradient_when_it_trains_though_its_input_does_not():
    from effscale import measure
    from effscale.models.blocks import MBConv

    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *(
            MBConv(16, 16, expand=4, kernel=3, stride=1, se=0.25, divisor=8, activation=nn.SiLU,
                   norm=nn.BatchNorm2d, drop_prob=0.0) for _ in range(2)), nn.SiLU(), nn.Conv2d(16, 8, 1))
    model[0].requires_grad_(False)  # frozen layers before the block: its input needs no gradient
    measure._RECORDED.clear()
    counts = [count_training_forward(model, 12, 4) for _ in range(2)]  # recorded, then replayed
    assert counts[0] == counts[1] == plain_counts(model, 12, 4)


def test_a_block_changed_between_two_counts_is_counted_as_it_is_now():
    from effscale.models.blocks import MBConv

    with torch.device("meta"):
        model = build_model(baseline("efficientnet_b0") | {"resolution": 32}, 10)
    before = count_training_forward(model, 32, 2)
    for block in model.modules():
        if isinstance(block, MBConv):
            block.stochastic_depth.p = 0.0  # no noise tensors saved any more
    after = count_training_forward(model, 32, 2)
    assert after == plain_counts(model, 32, 2) and after[2] < before[2]


def test_counting_puts_back_a_forward_set_on_a_block():
    from effscale import measure
    from effscale.models.blocks import MBConv

    with torch.device("meta"):
        model = build_model(baseline("efficientnet_b0") | {"resolution": 32}, 10)
    blocks = [m for m in model.modules() if isinstance(m, MBConv)]
    traced = []
    blocks[3].forward = lambda x, block=blocks[3]: traced.append(x.shape) or MBConv.forward(block, x)
    mine = blocks[3].forward
    measure._RECORDED.clear()  # so that the block runs, through its own forward
    count_training_forward(model, 32, 2)
    assert blocks[3].forward is mine and len(traced) == 1
    assert all("forward" not in vars(block) for block in blocks[:3] + blocks[4:])


class _Odd(nn.Module):
    """Calls a replay must get right: one tensor twice, in-place ops, an op that saves its output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu_(self.conv(x))
        y = y * y + torch.sigmoid(y)
        y.add_(1.0)
        pooled = nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.fc(nn.functional.dropout(pooled, 0.2, True, inplace=True))


def test_replay_is_exact_for_aliased_and_in_place_calls():
    from effscale import measure

    with torch.device("meta"):
        model = _Odd()
    measure._RECORDED.clear()
    counts = [count_training_forward(model, 12, 2) for _ in range(3)]
    assert counts[0] == counts[1] == counts[2] == plain_counts(model, 12, 2)


def test_measuring_leaves_no_reference_cycles_behind():
    """measure_tables pauses the cycle collector, so garbage only it could free would pile up over a grid
    (and hold the counted tensors alive)."""
    import gc

    table = baseline("efficientnet_b0") | {"resolution": 32}
    build = lambda t: build_model(t, 10)  # noqa: E731
    measure_tables([table], build)  # records the replayable calls (PyTorch's meta kernels leave a few cycles)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        measure_tables([table], build)  # replays them, as for every grid point but the first few
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()


def test_build_on_meta_skips_values_only_on_the_meta_device():
    from effscale.measure import build_on_meta

    table = baseline("efficientnet_b0") | {"resolution": 32}
    filled = []

    def build(t):
        cpu = torch.empty(3, device="cpu")
        nn.init.ones_(cpu)  # a real tensor built alongside keeps its values
        filled.append(cpu)
        return build_model(t, 10)

    fast = build_on_meta(build, table)
    with torch.device("meta"):
        plain = build_model(table, 10)
    assert all(p.is_meta for p in fast.parameters())
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert filled[0].tolist() == [1.0, 1.0, 1.0]


def test_a_step_out_of_device_memory_is_null_in_json_and_said_in_the_table(monkeypatch, capsys):
    import dataclasses
    import json

    from effscale import measure
    from effscale.commands import measure as measure_command

    real = measure.measure_table
    out_of_memory = lambda *a, **kw: dataclasses.replace(real(*a, **kw), peak_mem_mb=math.inf)  # noqa: E731
    monkeypatch.setattr(measure, "measure_table", out_of_memory)
    measure_command(["format=json", "data.resolution=32"])
    row = json.loads(capsys.readouterr().out)  # "Infinity" is not JSON: strict parsers refuse it
    assert row["peak_mem_mb"] is None and row["params"] > 0
    measure_command(["data.resolution=32"])
    assert "out of memory" in capsys.readouterr().out.splitlines()[2]


def test_a_memory_budget_the_baseline_cannot_fit_on_the_device_at_all_is_refused_in_words():
    from effscale.errors import UserError
    from effscale.budget import check_baseline_budget

    from effscale.measure import Measurement

    base = Measurement("efficientnet_b0", 4_020_358, 28_000_000, 56_000_000, 1, 32, 1.0, 1.0, 1.0, peak_mem_mb=math.inf)
    with pytest.raises(UserError, match=r"^budget.max_peak_mem_mb=4096: the baseline's own training step runs out "
                                        r"of the device's memory, so no candidate fits; lower data.batch_size$"):
        check_baseline_budget(base, {"max_peak_mem_mb": 4096, "max_latency_ms": None, "max_params": None})


# --- any network: measure_model ------------------------------------------------------------------------


class ConvAttention(nn.Module):
    """A 4×4 patch conv, self-attention over the 16×16 patches, a transposed conv back and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 64, 4, stride=4)
        self.attention = nn.MultiheadAttention(64, 4, batch_first=True)
        self.up = nn.ConvTranspose2d(64, 3, 4, stride=4)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        y = self.patch(x)
        tokens = y.flatten(2).transpose(1, 2)
        tokens, _ = self.attention(tokens, tokens, tokens)
        return self.head(tokens.mean(1)) + self.up(tokens.transpose(1, 2).reshape(y.shape)).mean()


def test_measure_model_counts_attention_and_transposed_convolutions_a_conv_count_would_miss():
    from effscale.measure import measure_model

    model = ConvAttention()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure_model(model, 64, batch_size=2)
    patches, dim = 16 * 16, 64
    conv = patches * dim * 3 * 4 * 4                       # each patch feature: 3·4·4 weights
    attention = 4 * patches * dim * dim + 2 * patches * patches * dim  # q, k, v, out projections; QKᵀ, AV
    up = patches * dim * 3 * 4 * 4                         # each input element meets 3·4·4 weights
    assert m.macs == conv + attention + up + dim * 10 == 14_156_416 and m.flops == 2 * m.macs
    assert m.params == sum(p.numel() for p in model.parameters())
    # pycls's activations: the outputs of convolutions and linear layers (attention's projections are
    # inside one functional op, and not among them)
    assert m.activations == patches * dim + 64 * 64 * 3 + 10
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["resnet18", "regnet_y_400mf", "convnext_tiny"])
def test_measure_model_gives_torchvisions_published_macs(name):
    import torchvision

    from effscale.measure import measure_model

    model = torchvision.models.get_model(name)
    published = torchvision.models.get_model_weights(name).DEFAULT.meta  # GMACs, which torchvision calls "GFLOPS"
    m = measure_model(model, 224, memory=False)
    assert m.params == published["num_params"]
    assert m.macs / 1e9 == pytest.approx(published["_ops"], abs=6e-4)


def test_a_network_whose_constructor_computes_with_values_is_built_off_meta_and_measured():
    import torchvision

    # RegNet's constructor computes its widths with tensors, which the meta device has no values for
    m = measure_table({"resolution": 224}, lambda t: torchvision.models.regnet_y_400mf(), memory=False)
    assert m.macs / 1e9 == pytest.approx(0.402, abs=6e-4)


class Volumes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(3, 8, 3, padding=1)
        self.conv1d = nn.Conv1d(8, 4, 5, groups=2)
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)

    def forward(self, x):
        y = self.conv3d(x.unsqueeze(2)).squeeze(2)          # (n, 8, h, w)
        z = self.conv1d(y.flatten(2))                         # (n, 4, h·w − 4)
        return self.up(z[..., :64].reshape(len(x), 4, 8, 8))


def test_the_counting_pass_counts_convolutions_of_any_dimension_and_transposed_ones_exactly():
    with torch.device("meta"):
        model = Volumes()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model.eval()(torch.empty(1, 3, 16, 16, device="meta"))
    assert count_macs_and_activations(model, 16) == (counter.get_total_flops() // 2, 8 * 256 + 4 * 252 + out.numel())


def test_a_latency_pass_that_cannot_fit_in_memory_is_infinite_and_the_table_says_out_of_memory(monkeypatch, capsys):
    from effscale import measure
    from effscale.commands import _print_table

    model = build_model(architecture("efficientnet_b0"))
    monkeypatch.setattr(measure, "memory_mb", lambda device: 10.0)  # under B0's 21 MB of weights: refused unrun
    monkeypatch.setattr(measure, "_latency_ms", lambda *a: pytest.fail("ran a pass that cannot fit"))
    assert math.isinf(measure.latency_ms(model, 64))
    monkeypatch.setattr(measure, "memory_mb", lambda device: 1e9)
    failed = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate"
    monkeypatch.setattr(measure, "_latency_ms", lambda *a: (_ for _ in ()).throw(RuntimeError(failed)))
    assert math.isinf(measure.latency_ms(model, 64))  # past the floor: the allocator's failure
    monkeypatch.setattr(measure, "_latency_ms", lambda *a: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        measure.latency_ms(model, 64)
    row = dict(name="m", resolution=64, width_mult=1.0, depth_mult=1.0, params=1, macs=1, flops=2, activations=1,
               peak_mem_mb=None, latency_ms=math.inf)
    _print_table([row], "cpu", 8, measure.human)
    assert capsys.readouterr().out.splitlines()[2].endswith("  out of memory")
