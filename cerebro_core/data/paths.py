"""Where a path really points, and whether it stays inside a root.

Every file the product reads on a user's behalf (a scraped folder, a labels.csv row, a tar member,
an S3 key, an indexed item it serves) goes through here: symlinks and ``..`` are resolved first,
so a link that leaves its folder is refused however it is spelled.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when ``path``, with every symlink resolved, is ``root`` or below it."""
    r = os.path.realpath(root)
    p = os.path.realpath(path)
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def safe_join(dest: str | os.PathLike, name: str) -> Optional[Path]:
    """``dest/name`` when ``name`` is a plain relative name (no absolute path, no ``..``, no
    empty or NUL part) that stays inside ``dest`` once resolved; None otherwise."""
    if not name or "\x00" in name or "\\" in name:
        return None
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("..", "") for part in pure.parts):
        return None
    target = Path(dest, *pure.parts)
    return target if inside(dest, target) else None
