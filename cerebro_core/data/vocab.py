"""Label vocabularies: class names (plain list, CSV or JSON name lists) or sentence captions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

NAME_COLUMNS = ("common_name", "label", "name", "class", "species")


class VocabularyError(ValueError):
    pass


def load_vocabulary(path: str | None) -> list[str]:
    """Distinct, non-empty entries in file order. ``.txt``: one per line; ``.csv``: the first of
    the columns common_name/label/name/class/species; ``.json``: a list, or an id → name object."""
    if not path:
        raise VocabularyError("adapt.vocabulary: no vocabulary configured")
    p = Path(path)
    if not p.exists():
        raise VocabularyError(f"adapt.vocabulary: file not found: {p}")
    if p.suffix.lower() == ".csv":
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            col = next((c for c in NAME_COLUMNS if c in (reader.fieldnames or [])), None)
            if col is None:
                raise VocabularyError(f"adapt.vocabulary: {p} has none of the columns {NAME_COLUMNS}")
            names = [r[col] for r in reader]
    elif p.suffix.lower() == ".json":
        data = json.loads(p.read_text())
        names = list(data.values()) if isinstance(data, dict) else list(data)
    else:
        names = p.read_text().splitlines()
    out = list(dict.fromkeys(" ".join(str(n).split()) for n in names if str(n).strip()))
    if not out:
        raise VocabularyError(f"adapt.vocabulary: {p} is empty")
    return out


def prompts_for(names: list[str], templates: list[str], kind: str) -> list[list[str]]:
    """Per class, its prompts (names × templates), or the caption itself for a caption vocabulary."""
    if kind == "captions":
        return [[n] for n in names]
    return [[t.format(n) for t in templates] for n in names]
