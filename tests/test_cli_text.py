"""The CLI prints no terminal control sequence that came from data (issue 38, item 7): file names,
EXIF fields, URLs and messages quoting them reach the terminal with their controls replaced."""

from __future__ import annotations

import os
import subprocess
from helpers import CEREBRO, REPO

TITLE = "\x1b]0;pwned\x07"  # OSC: retitles the terminal
SPOOF = "\r\x1b[2K  1. 0.999  [src] innocent.jpg\n\x9b31m\u202egpj.exe"  # erase the line, fake a hit, C1 CSI, RLO


def _bare(text: str) -> None:
    for ch in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert ch not in text, (ch, text)


def test_a_search_hit_prints_without_control_characters():
    from cerebro_cli.search_cmds import hit_line

    h = {"score": 0.5, "source": f"src{TITLE}", "uri": f"deer{TITLE}{SPOOF}.jpg", "media_type": "image",
         "species": f"red fox{TITLE}", "species_score": 0.9, "taken_at": f"2009-04-01{SPOOF}",
         "camera": f"Make{TITLE}", "group_size": 1}
    line = hit_line(1, h)
    _bare(line)
    assert "\n" not in line and line.startswith("  1. 0.500  [src?]0;pwned?] deer?]0;pwned???[2K")
    assert "red fox?]0;pwned? 0.90" in line and "Make?]0;pwned?" in line


def test_cli_messages_quoting_data_are_cleaned(tmp_path):
    env = dict(os.environ, CEREBRO_HOME=str(tmp_path / "home"))
    env.pop("MLFLOW_TRACKING_URI", None)
    demo = str(REPO / "configs/demo.yaml")
    for args in (["search", "--image", f"{tmp_path}/evil{TITLE}{SPOOF}.jpg", "-c", demo],
                 ["reindex", "--scrape", f"{tmp_path}/evil{TITLE}{SPOOF}", "-c", demo]):
        r = subprocess.run([CEREBRO, *args], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 2 and "evil?]0;pwned?" in r.stderr, r.stderr[-500:]
        _bare(r.stderr)
