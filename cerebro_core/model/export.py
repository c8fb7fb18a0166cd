"""A registered CLIP as open_clip itself loads it, outside Cerebro.

:func:`export_open_clip` writes the folder open_clip's ``local-dir:`` schema reads
(``open_clip.create_model_and_transforms("local-dir:DIR")``, ``open_clip.get_tokenizer("local-dir:DIR")``):
``open_clip_config.json`` (the architecture as ``model_cfg``, the image transform as
``preprocess_cfg``) and ``open_clip_model.safetensors``, the plain state dict (no pickle, no
wrapping key), so the demo's tiny architectures load as well as ViT-B-32. A ``README.md`` says how
to load it and where the weights came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cerebro_core.storage import Storage, join

CONFIG, WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"


def open_clip_config(bundle) -> dict[str, Any]:
    """``{"model_cfg", "preprocess_cfg"}`` of a loaded bundle, as open_clip's hub/local configs hold them."""
    from open_clip.model import get_model_preprocess_cfg

    pre = dict(get_model_preprocess_cfg(bundle.model))
    pre = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pre.items()}
    return {"model_cfg": bundle.arch, "preprocess_cfg": pre}


def export_open_clip(bundle, dest: str, provenance: dict[str, Any], storage: Storage | None = None) -> list[str]:
    """Write ``bundle`` (weights loaded) as an open_clip ``local-dir:`` folder at ``dest`` (a path or
    URL); returns the URLs written."""
    from safetensors.torch import save

    storage = storage or Storage()
    state = {k: v.detach().to("cpu").contiguous() for k, v in bundle.model.state_dict().items()}
    cfg = open_clip_config(bundle)
    name = provenance.get("name", bundle.name)
    readme = (
        f"# {name}\n\nA CLIP trained from random weights by Cerebro ({bundle.name} architecture).\n\n"
        "```python\nimport open_clip\n\n"
        f'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{Path(str(dest)).name}")\n'
        f'tokenizer = open_clip.get_tokenizer("local-dir:{Path(str(dest)).name}")\n```\n\n'
        "Provenance:\n\n" + "".join(f"- {k}: {v}\n" for k, v in sorted(provenance.items()))
    )
    out = []
    for fname, body in ((WEIGHTS, save(state, metadata={k: str(v) for k, v in provenance.items()})),
                        (CONFIG, (json.dumps(cfg, indent=2) + "\n").encode()),
                        ("README.md", readme.encode())):
        url = join(str(dest), fname)
        storage.write_bytes(url, body)
        out.append(url)
    return out
