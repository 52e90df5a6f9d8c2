"""The hardware a run is fitted to: the CPU cores this process may use (thread and worker counts),
and the device the `device` setting names."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from effscale.errors import UserError


def available_cores() -> int:
    """The cores this process may use: its CPU affinity where the OS has one, capped by a cgroup's CPU
    quota (a container's `--cpus`, a Kubernetes CPU limit) rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """How many CPUs' worth of time this process's cgroups allow it: the smallest quota from its own cgroup
    up to the root of each hierarchy it is in (v2's `cpu.max`, v1's `cpu.cfs_quota_us`), or None where
    none is set. A container often sees its own cgroup as the root of the mount, under another name in
    `membership`: folders that do not exist are skipped, so the mount's root is read then."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            hierarchy, read = root, _cpu_max
        elif "cpu" in controllers.split(","):
            hierarchy, read = root / controllers, _cfs_quota
            if not hierarchy.is_dir():
                hierarchy = root / "cpu"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            quota = read(hierarchy.joinpath(*parts[:depth]))
            if quota:
                quotas.append(quota)
    return min(quotas, default=None)


def _cpu_max(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _cfs_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        return quota / int((folder / "cpu.cfs_period_us").read_text()) if quota > 0 else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def device_name(device: str, count: int = 1) -> str:
    """The hardware a trial trained on, as its results row records it: `cpu`, or the GPU's name (`NVIDIA
    H100 80GB HBM3`), with how many when it trained on several (`4x NVIDIA A100-SXM4-40GB`)."""
    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    return f"{count}x {name}" if count > 1 else name


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
