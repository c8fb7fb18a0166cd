"""What the CLI prints that came from data (file names, EXIF fields, URLs, species, messages that
quote them) goes through :func:`clean`: no terminal control sequence reaches the terminal, so a
file named ``\\x1b]0;title\\x07.jpg`` cannot retitle the window, move the cursor or spoof a line."""

from __future__ import annotations

import re

# C0 (tab and newline included: a value is one line), DEL, C1 (CSI 0x9b, OSC 0x9d, …), and the
# bidirectional overrides and isolates that reorder what a line shows
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(value: object) -> str:
    """``value`` as text with every control character replaced by '?'."""
    return _CONTROL.sub("?", str(value))


def clean_lines(value: object) -> str:
    """A message of several lines (a config error lists one key a line): each line cleaned."""
    return "\n".join(clean(line) for line in str(value).split("\n"))
