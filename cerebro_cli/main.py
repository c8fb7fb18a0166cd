"""The ``cerebro`` command line. It drives the Prefect flows, so it lives outside cerebro_core.

The app and the shape every stage command shares are in :mod:`cerebro_cli.app`; each module
below registers its commands on it, in the order ``cerebro --help`` lists them. None of them
imports this module."""

from __future__ import annotations

from cerebro_cli.app import app
from cerebro_cli import info_cmds  # noqa: F401 — info, plan
from cerebro_cli import stage_cmds  # noqa: F401 — download, pretrain, adapt, index, reindex
from cerebro_cli import search_cmds  # noqa: F401 — search, serve
from cerebro_cli import ui  # noqa: F401 — ui
from cerebro_cli import gc_cmd  # noqa: F401 — gc
from cerebro_cli import review_cmds  # noqa: F401 — review export|import
from cerebro_cli import model_cmds  # noqa: F401 — export-model
from cerebro_cli import demo_cmd  # noqa: F401 — demo

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
