"""What compute this process sees."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional

CGROUP = Path("/sys/fs/cgroup")


def cpu_quota(cgroup: Path = CGROUP) -> Optional[float]:
    """The container's CPU limit in CPUs (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``); None when unlimited or unreadable."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may use: its affinity mask, capped by the container's CPU quota
    (rounded up). ``os.cpu_count()`` counts the host's CPUs, not these: the one helper for
    thread counts (torchrun workers' OMP_NUM_THREADS, decode threads, loader workers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    q = cpu_quota(cgroup)
    if q is not None:
        n = min(n, max(1, math.ceil(q)))
    return max(1, n)


def describe() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda_devices": [],
    }
    for i in range(info["cuda_device_count"]):
        p = torch.cuda.get_device_properties(i)
        info["cuda_devices"].append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    return info
