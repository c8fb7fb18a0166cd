"""Reading a config: YAML values with ``${VAR}`` expanded, ``--set section.key=value``
overrides, and validation errors as one line per offending key (the models are in
:mod:`cerebro_core.config`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class ConfigError(ValueError):
    """A configuration problem; its message names the offending key(s)."""


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{loc}: {e['msg']}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` → (['a', 'b'], value parsed as a YAML scalar/list)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[: i + 1])}: is not a section, cannot set {'.'.join(path)}")
            node = child
        node[path[-1]] = value
    return data


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(node: Any, key: str = "") -> Any:
    """Expand ``${VAR}`` (and ``${VAR:-default}``) in YAML string values; ``${CEREBRO_HOME}``
    defaults to ./.cerebro. A ``${VAR}`` whose variable is unset (and has no default) is a
    ConfigError naming the variable and the key: never a literal ``${VAR}`` path."""
    if isinstance(node, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, f"{key}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "$" in node:
        home = os.environ.get("CEREBRO_HOME") or str(Path(".cerebro").resolve())

        def value(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name == "CEREBRO_HOME":
                return home
            got = os.environ.get(name)
            if got is None:
                if default is None:
                    raise ConfigError(f"{key or '<root>'}: ${{{name}}} is not set (export {name}=… or give "
                                      f"${{{name}:-default}})")
                return default
            return got

        return os.path.expandvars(_VAR.sub(value, node))
    return node
