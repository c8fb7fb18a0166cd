"""What compute this process sees."""

from __future__ import annotations

import os
from typing import Any


def describe() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda_devices": [],
    }
    for i in range(info["cuda_device_count"]):
        p = torch.cuda.get_device_properties(i)
        info["cuda_devices"].append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    return info
