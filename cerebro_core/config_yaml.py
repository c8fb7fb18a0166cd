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


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB
MAX_CONFIG_NODES = 10_000  # YAML nodes after aliases are expanded (a config has a few hundred)


def _expanded_size(node: yaml.Node, path: str) -> int:
    """Nodes of the tree that ``node`` stands for once aliases are expanded; refuses a recursive
    alias and stops counting past MAX_CONFIG_NODES (an alias bomb is refused, never built)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            raise ConfigError(f"{path}: a recursive alias (an anchor used inside itself, line {n.start_mark.line + 1})")
        active.add(id(n))
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for kv in n.value for c in kv]
        else:
            children = []
        for c in children:
            total += size(c)
            if total > MAX_CONFIG_NODES:
                raise ConfigError(f"{path}: over {MAX_CONFIG_NODES:,} values once its aliases are expanded "
                                  "(an alias bomb?)")
        active.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A config file's mapping; anything else (a missing path, a directory, a device, a binary or
    huge file, invalid YAML, an alias bomb, a recursive alias) is a one-line ConfigError."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if not p.is_file():
        raise ConfigError(f"{p}: not a regular file (a directory or a device?)")
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES >> 20} MB: not a config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text (a binary file?)") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return {}
        _expanded_size(node, str(p))
        loaded = yaml.SafeLoader(text).construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {what}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    return loaded


def format_errors(err: ValidationError, data: Any = None) -> str:
    """One line per error, named by the key as the user wrote it (``data``: the validated input):
    the tag pydantic puts in a kind union's location (``adapt.student.replay.foo``) is left out,
    and a kind that is not one names its ``kind`` key."""
    lines = []
    for e in err.errors():
        parts, node = [], data
        for i, p in enumerate(e["loc"]):
            if isinstance(node, dict) and p not in node and i < len(e["loc"]) - 1:
                continue  # a union's tag, not a key
            parts.append(str(p))
            node = node.get(p) if isinstance(node, dict) else (
                node[p] if isinstance(node, list) and isinstance(p, int) and p < len(node) else None)
        loc = ".".join(parts) or "<root>"
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):  # a kind's union: name the key itself
            loc += "." + str((e.get("ctx") or {}).get("discriminator", "kind")).strip("'")
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
