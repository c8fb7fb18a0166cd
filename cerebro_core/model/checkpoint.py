"""The one checkpoint format: a ``torch.save`` dict of tensors and plain values, written
atomically to local or S3 storage, loaded with ``weights_only=True`` and strict state dicts.

Training checkpoints (``step-00001234.pt``) carry everything exact resume needs: model,
optimizer, scaler, step, epoch and position in the epoch, RNG states. A *model* checkpoint (what
the registry points at) is the same file; :func:`load_model_weights` reads only the model part.
"""

from __future__ import annotations

import io
import random
import re
from typing import Any, Optional

import torch

from cerebro_core.storage import Storage, join

_STEP_RE = re.compile(r"step-(\d{8})\.pt$")


def step_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def list_checkpoints(storage: Storage, ckpt_dir: str) -> list[tuple[int, str]]:
    """(step, url) of complete checkpoints, oldest first (writes are atomic, so every listed
    file is complete)."""
    out = []
    for url in storage.ls(ckpt_dir):
        m = _STEP_RE.search(url.rsplit("/", 1)[-1])
        if m:
            out.append((int(m.group(1)), url))
    return sorted(out)


def latest(storage: Storage, ckpt_dir: str) -> Optional[str]:
    cks = list_checkpoints(storage, ckpt_dir)
    return cks[-1][1] if cks else None


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _py_state_to_plain(random.getstate())}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_plain_to_py_state(st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _py_state_to_plain(s):
    version, internal, gauss = s
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _plain_to_py_state(d):
    return (d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"])


def save(storage: Storage, url: str, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(url, buf.getvalue())


def load(storage: Storage, url: str) -> dict[str, Any]:
    return torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)


def prune(storage: Storage, ckpt_dir: str, keep: int) -> list[str]:
    cks = list_checkpoints(storage, ckpt_dir)
    removed = []
    for _, url in cks[: max(0, len(cks) - keep)]:
        storage.rm(url)
        removed.append(url)
    return removed


def save_training(storage: Storage, ckpt_dir: str, state: dict[str, Any], keep: int) -> str:
    url = join(ckpt_dir, step_name(int(state["step"])))
    save(storage, url, state)
    prune(storage, ckpt_dir, keep)
    return url


def load_model_weights(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Strict load: a mismatch is an error, never papered over."""
    model.load_state_dict(state["model"], strict=True)
