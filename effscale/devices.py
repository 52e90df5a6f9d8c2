"""The hardware a run is fitted to: the CPU cores this process may use (thread and worker counts),
and the device the `device` setting names."""

from __future__ import annotations

import os
import re

from effscale.errors import UserError


def available_cores() -> int:
    """The cores this process may use (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(device: str) -> str:
    """`device` (auto, cpu, cuda, cuda:N) as torch names it; one error when this machine has no such device."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise UserError(f"device={device}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device}: no CUDA device is available on this machine")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        "numbered from 0")
    return device
