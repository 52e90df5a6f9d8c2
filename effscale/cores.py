"""The CPU cores this process may use: what thread counts and worker counts are fitted to."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may use (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
