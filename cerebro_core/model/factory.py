"""open_clip models from random initialisation, plus the project's tiny configs.

The JSON files in ``configs/`` are registered with open_clip's own registry
(``open_clip.add_model_config``), so ``cerebro-tiny-vit-32`` is created exactly like ``ViT-B-32``.
Pretrained weights are never loaded: every model starts from random weights.
"""

from __future__ import annotations

import functools
import logging
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

CONFIG_DIR = Path(__file__).with_name("configs")


@functools.lru_cache(maxsize=1)
def register_configs() -> list[str]:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def model_config(name: str) -> dict[str, Any]:
    """The architecture dict open_clip builds ``name`` from."""
    import open_clip

    register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"train.model: unknown open_clip architecture {name!r} (see open_clip.list_models())")
    return json.loads(json.dumps(cfg))


@dataclass
class ClipBundle:
    model: Any
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    name: str
    arch: dict[str, Any]
    weights: Optional[str] = None  # where the weights were loaded from (a checkpoint or model.pt)

    @property
    def image_size(self) -> int:
        s = self.arch["vision_cfg"]["image_size"]
        return s if isinstance(s, int) else s[0]


class _NoPretrainedNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # random init is the point here, not news
        return "No pretrained weights loaded" not in record.getMessage()


def create(name: str, device: str = "cpu", precision: str = "fp32", aug_cfg: dict | None = None) -> ClipBundle:
    """A randomly initialised open_clip model with its transforms and tokenizer; ``aug_cfg`` is
    open_clip's ``AugmentationCfg`` (as a dict) for the training transform."""
    import open_clip

    root = logging.getLogger()
    if not any(isinstance(f, _NoPretrainedNote) for f in root.filters):
        root.addFilter(_NoPretrainedNote())
    arch = model_config(name)
    model, pre_train, pre_val = open_clip.create_model_and_transforms(
        name, pretrained=None, precision=precision, device=device, output_dict=True, aug_cfg=aug_cfg
    )
    tokenizer = open_clip.get_tokenizer(name)
    return ClipBundle(model, pre_train, pre_val, tokenizer, name, arch)


def count_params(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    visual = sum(p.numel() for p in model.visual.parameters())
    return {"total": total, "visual": visual, "text": total - visual}
