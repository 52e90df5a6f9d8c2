"""`effscale finetune`: transfer learning from pretrained weights to any data set.

Two phases, the usual recipe (Kornblith et al., "Do Better ImageNet Models Transfer Better?",
CVPR 2019, measure both: fixed features with a new classifier, and fine-tuning everything):

  1. a new classifier for the data set's classes is trained on the frozen network: no gradient reaches
     the backbone and its BatchNorms stay in eval mode, normalising with their ImageNet statistics;
  2. optionally (`finetune.unfreeze_epochs` > 0) everything is trained, the backbone at
     `finetune.backbone_lr_mult` × the head's learning rate and with the gradient norm clipped
     (`finetune.unfreeze_grad_clip`): the head trained in phase 1 is confident, and its first
     gradients into the backbone, unclipped, sent Lite0 on Fashion-MNIST from 73 % to chance.
     Even clipped, one phase-2 epoch on 800 Fashion-MNIST images at 64 px lowered validation
     accuracy (71 % → 59–65 % for backbone rates 0.01–0.001), so phase 2 is off by default: it is
     for data sets large enough to move 4–5 M pretrained parameters.

The data module normalises images its own way (its mean/std, one channel for greyscale data). Rather
than force the pretrained normalisation on it, the stem convolution is re-expressed for the data's
normalisation (`adapt_stem`), which also turns an RGB stem into a greyscale one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch import nn

from effscale.devices import resolve_device
from effscale.data import EVAL_CROP, build_datamodule
from effscale.errors import UserError
from effscale.files import remove_created, unused_path, writable_folder
from effscale.measure import least_memory_mb, memory_mb
from effscale.models.blocks import init_weights
from effscale.models.network import LINEAR_INIT, ResNet
from effscale.train import Classifier, interruptible, make_trainer, set_threads
from effscale.weights import Preprocessing, Pretrained, load_pretrained, save_checkpoint


def stem_of(model: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The first convolution and the BatchNorm after it (EfficientNet/MobileNetV2 and ResNet layouts)."""
    if hasattr(model, "features"):
        return model.features[0][0], model.features[0][1]
    return model.conv1, model.bn1


@torch.no_grad()
def adapt_stem(model: nn.Module, trained_mean: Sequence[float], trained_std: Sequence[float],
               data_mean: Sequence[float], data_std: Sequence[float]) -> None:
    """Re-express the stem for input normalised as (x − data_mean) / data_std, so that it computes what it
    computed on the normalisation it was trained with, (x − trained_mean) / trained_std.

    For a pixel value x the trained stem saw x_c = (x − m_c) / s_c in each channel c. Writing x through
    the new input x' = (x − m') / s' gives, for output channel o,

        Σ_c w_oc · x_c = Σ_c (w_oc · s'/s_c) · x'  +  Σ_c Σ_kernel w_oc · (m' − m_c) / s_c

    so each kernel is scaled by s'/s_c and the constant second term, folded into the following
    BatchNorm's running mean, is subtracted there. Greyscale data (one channel) is the same sum over
    the RGB kernels: a grey image gives exactly what its three-channel copy gave the RGB stem. The
    identity holds wherever the kernel does not overlap the zero padding at the image border.
    """
    conv, bn = stem_of(model)
    weight = conv.weight.double()
    m, s = torch.tensor(trained_mean, dtype=torch.float64), torch.tensor(trained_std, dtype=torch.float64)
    m_new = torch.tensor(data_mean, dtype=torch.float64).expand(len(m)) if len(data_mean) == 1 \
        else torch.tensor(data_mean, dtype=torch.float64)
    s_new = torch.tensor(data_std, dtype=torch.float64).expand(len(s)) if len(data_std) == 1 \
        else torch.tensor(data_std, dtype=torch.float64)
    scaled = weight * (s_new / s).view(1, -1, 1, 1)
    offset = (weight.sum(dim=(2, 3)) * ((m_new - m) / s).view(1, -1)).sum(dim=1)
    if len(data_mean) == 1:
        scaled = scaled.sum(dim=1, keepdim=True)
        conv.in_channels = 1
    conv.weight = nn.Parameter(scaled.to(conv.weight.dtype))
    bn.running_mean -= offset.to(bn.running_mean.dtype)


def replace_classifier(model: nn.Module, num_classes: int, family: str) -> nn.Linear:
    """A fresh linear classifier for `num_classes`, initialised as torchvision initialises `family`'s."""
    new = nn.Linear(classifier_of(model).in_features, num_classes)
    init_weights(new, LINEAR_INIT[family])
    if isinstance(model, ResNet):
        model.fc = new
    else:
        model.classifier[-1] = new
    return new


def classifier_of(model: nn.Module) -> nn.Linear:
    return model.fc if isinstance(model, ResNet) else model.classifier[-1]


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in classifier_of(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    for p in backbone_parameters(model):
        p.requires_grad_(trainable)


# --- training ----------------------------------------------------------------------------------------


def head_module(network: nn.Module) -> nn.Module:
    """The part that stays in train mode while the backbone is frozen (the classifier with its dropout)."""
    return network.fc if isinstance(network, ResNet) else network.classifier


class KeepBackboneBatchNormFrozen(L.Callback):
    """Keeps the backbone's BatchNorm in eval mode while training, so it normalises with its pretrained
    running statistics and does not overwrite them with a few batches of a new data set: with
    `batch_norm_only` (phase 2, the backbone training) only BatchNorm, so stochastic depth and dropout
    still regularise it; otherwise (phase 1, the backbone frozen) every module but the classifier.
    Lightning puts modules back in train mode after each validation; this runs at each epoch start."""

    def __init__(self, batch_norm_only: bool = False) -> None:
        self.batch_norm_only = batch_norm_only

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        network, head = pl_module.network, head_module(pl_module.network)
        if not self.batch_norm_only:
            network.eval()
            head.train()
            return
        in_head = set(map(id, head.modules()))
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in in_head:
                module.eval()


class FineTuner(Classifier):
    """The sweep's Classifier with the backbone frozen (`backbone_lr_mult` None) or trained at
    `backbone_lr_mult` × the head's learning rate."""

    def __init__(self, network: nn.Module, recipe: dict[str, Any], backbone_lr_mult: float | None) -> None:
        super().__init__(network, recipe)
        self.backbone_lr_mult = backbone_lr_mult
        set_backbone_trainable(network, backbone_lr_mult is not None)

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        head = list(classifier_of(self.network).parameters())
        if self.backbone_lr_mult is None:
            return [(head, 1.0)]
        return [(backbone_parameters(self.network), self.backbone_lr_mult), (head, 1.0)]


def finetune(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune `finetune.weights` on the `data` config, save an effscale checkpoint and return
    `val_acc` after each phase, `test_acc` and the `checkpoint` path."""
    opts = cfg["finetune"]
    device = resolve_device(cfg["device"])
    recipe = dict(opts["recipe"])
    set_threads(recipe.get("threads"))
    L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    pretrained = load_pretrained(str(opts["weights"]))
    resolution = input_size(cfg["data"].get("resolution"), pretrained, int(opts["min_resolution"]))
    batch_size = int(opts["batch_size"])
    data = build_datamodule(cfg["data"], resolution, batch_size, recipe.get("num_workers"), seed=int(cfg["seed"]))
    network = transferred(pretrained, data)
    check_fits_in_memory(network, data.in_channels, resolution, batch_size, device)
    with memory_named(resolution, batch_size):
        check_features_vary(network, data)
    if recipe.get("channels_last", True):
        network = network.to(memory_format=torch.channels_last)

    # Checked before training: a checkpoint it cannot write would lose the run.
    checkpoint = Path(str(opts["checkpoint"])).expanduser()
    made = checkpoint_folder(checkpoint, str(opts["checkpoint"]))
    try:
        with memory_named(resolution, batch_size):
            result = train_phases(network, data, opts, recipe, device)
        table = {**pretrained.table, "resolution": resolution}
        result["checkpoint"] = str(save_checkpoint(  # beside an earlier run's model, not over it (model-v1.pt)
            unused_path(checkpoint), network.to(memory_format=torch.contiguous_format), table, data.class_names,
            data_preprocessing(data), val_acc=result["val_acc"], test_acc=result["test_acc"],
            data=str(cfg["data"]["name"]), weights=pretrained.source))
    except BaseException:  # refused, diverged or interrupted: no checkpoint, and no folder of this run's
        remove_created(made, checkpoint.parent)
        raise
    return result


def input_size(requested: int | None, pretrained: Pretrained, minimum: int) -> int:
    """The input size to fine-tune at: data.resolution (null: the weights' own), raised to `minimum`.
    An ImageNet network's last stage sees a 1×1 map at 32 px, the size the small data sets' configs
    give a search, and Lite0's features there are all zero (ReLU6 over 1×1 maps): a new classifier on
    them stays at chance. 64 px leaves it 2×2."""
    size = int(requested or pretrained.table["resolution"])
    if size < minimum:
        print(f"input size {minimum} px: data.resolution={size} is below finetune.min_resolution={minimum}, "
              "what pretrained features need (finetune.min_resolution=1 keeps it)")
    return max(size, minimum)


# Below this mean spread (standard deviation across images, averaged over the features) the features
# say nothing of the image. Lite0 on Fashion-MNIST: 3e-5 at 32 px, where 99.99 % of them are 0 (a few
# ReLU6 units keep a trace of the border), and 0.2–0.7 from 40 px up.
MIN_FEATURE_SPREAD = 1e-3


@torch.no_grad()
def check_features_vary(network: nn.Module, data: Any) -> None:
    """Refuse to train a classifier on features that are (nearly) the same for every image (all but
    zero, as Lite0's are at 32 px): it could only learn the class frequencies, and would report chance."""
    features: list[torch.Tensor] = []
    hook = classifier_of(network).register_forward_pre_hook(lambda module, args: features.append(args[0]))
    with torch.random.fork_rng(devices=[]):  # a loader draws a seed: training's random numbers stay as they were
        images = next(iter(data.val_dataloader()))[0]
    was_training = network.training
    try:
        network.eval()(images[:16])
    finally:
        hook.remove()
        network.train(was_training)
    spread = float(features[0].float().std(dim=0).mean()) if len(images) > 1 and features else math.inf
    if spread < MIN_FEATURE_SPREAD:
        raise UserError(f"at {data.resolution} px the pretrained network gives every image the same "
                        f"features, to within {spread:.1g} (as Lite0 does when its last stage sees 1×1); "
                        "fine-tune at a larger input, data.resolution=64 or more")


@contextmanager
def memory_named(resolution: int, batch_size: int) -> Iterator[None]:
    """A GPU out of memory past the floor `check_fits_in_memory` checks: one line saying what to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError(f"the GPU ran out of memory at {resolution} px, batch {batch_size}; lower data.resolution "
                        "or finetune.batch_size") from None


def check_fits_in_memory(network: nn.Module, in_channels: int, resolution: int, batch_size: int,
                         device: str) -> None:
    """Refuse an input size or batch whose training step cannot fit in the device's memory, by a floor
    under what it needs (`least_memory_mb`): the process would otherwise be killed mid-run with no word
    of why (data.resolution=5000 took 21 GB before the kernel stopped it)."""
    need, have = least_memory_mb(network, in_channels, resolution, batch_size), memory_mb(device)
    if need > have:
        where = "available on this machine" if device == "cpu" else f"that {device} has"
        raise UserError(f"a training step at {resolution} px, batch {batch_size}, needs at least {need / 1024:,.1f} "
                        f"GB, more than the {have / 1024:,.1f} GB {where}; lower data.resolution or "
                        "finetune.batch_size")


def checkpoint_folder(checkpoint: Path, typed: str = "") -> Path | None:
    """Create the checkpoint's folder and check it can be written; the outermost folder this made, if any.
    `typed`, the path as given, names a folder when it ends in a slash, whether or not that folder exists."""
    if checkpoint.is_dir() or typed.endswith(("/", os.sep)):
        raise UserError(f"finetune.checkpoint: {checkpoint} is a folder; expected a file to write, "
                        f"such as {checkpoint / 'model.pt'}")
    try:
        return writable_folder(checkpoint.parent)
    except OSError as exc:
        raise UserError(f"finetune.checkpoint: cannot write {checkpoint} ({exc.strerror or exc})") from None


def train_phases(network: nn.Module, data: Any, opts: dict[str, Any], recipe: dict[str, Any],
                 device: str) -> dict[str, Any]:
    """Train the new classifier on the frozen network, then everything when `finetune.unfreeze_epochs`
    asks; `val_acc_<phase>` after each phase, the last as `val_acc`, and `test_acc`."""
    phases = [("head", int(opts["head_epochs"]), None)]
    if int(opts["unfreeze_epochs"]):
        phases.append(("all", int(opts["unfreeze_epochs"]), float(opts["backbone_lr_mult"])))
    result: dict[str, Any] = {}
    for phase, epochs, lr_mult in phases:
        network.train()  # the callback below puts the backbone back in eval mode where it should be
        module = FineTuner(network, recipe, lr_mult)
        callbacks = [] if phase == "all" and opts.get("train_bn") else [KeepBackboneBatchNormFrozen(phase == "all")]
        phase_recipe = {**recipe, "max_epochs": epochs}
        if phase == "all":
            phase_recipe["gradient_clip_val"] = opts.get("unfreeze_grad_clip")
        trainer = make_trainer(phase_recipe, device=device, callbacks=callbacks)
        interruptible(trainer, trainer.fit, module, datamodule=data)  # Ctrl-C: exit 130, no checkpoint
        if module.failure:
            raise UserError(f"training diverged in the {phase} phase ({module.failure}); "
                            "lower finetune.recipe.lr")
        result[f"val_acc_{phase}"] = module.val_history[-1]
    if data.has_test_split:  # else test_acc stays None: the validation images are all that was held out
        interruptible(trainer, trainer.test, module, datamodule=data, verbose=False)
    result.update(val_acc=module.val_history[-1], test_acc=module.test_acc)
    return result


def transferred(pretrained: Pretrained, data: Any) -> nn.Module:
    """The pretrained network with a new classifier for the data's classes and its stem re-expressed
    for the data's channels and normalisation."""
    network = pretrained.model
    trained_channels = pretrained.preprocessing.in_channels
    if data.in_channels not in (1, trained_channels):
        either = "" if trained_channels == 1 else " or 1"
        raise UserError(f"data.in_channels={data.in_channels}: the weights take {trained_channels} channel(s); use "
                        f"data.in_channels={trained_channels}{either}, with as many values in data.mean and data.std")
    adapt_stem(network, pretrained.preprocessing.mean, pretrained.preprocessing.std, data.mean, data.std)
    replace_classifier(network, data.num_classes, pretrained.table["family"])
    return network


def data_preprocessing(data: Any) -> Preprocessing:
    """What the data module does to an evaluation image, for `effscale predict` to repeat on a photo.
    Image folders resize to resolution / 0.875 and centre-crop; the in-memory sets are square and
    resized whole."""
    res = int(data.resolution)
    resize = round(res / EVAL_CROP) if data.name == "imagefolder" else res
    return Preprocessing(resize, res, tuple(data.mean), tuple(data.std), "bilinear")
