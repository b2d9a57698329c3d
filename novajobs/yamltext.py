"""A small, deterministic YAML writer for the generated deployment files.

Why not PyYAML: the output is committed and compared byte for byte (the drift test),
so it must not change with a library's line folding or quoting choices, and
`render-deploy` should not need a package the jobs never use. The subset written here
is plain block YAML: mappings, sequences, numbers, booleans, null, and strings that are
written plain only when YAML cannot read them as anything else (``"100m"``, ``"1:20"``,
``"on"``, ``"*/5 * * * *"`` are quoted).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
# YAML 1.1 readers (PyYAML, Kubernetes' sigs.k8s.io/yaml) take these as booleans/null.
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none"}


def dump(value: Mapping[str, Any]) -> str:
    """The mapping ``value`` as a YAML document."""
    return "\n".join(_block(value, 0)) + "\n"


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    if "\n" not in text and text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted one


def _block(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _is_collection(item) and item:
                lines.append(f"{pad}{scalar(key)}:")
                lines.extend(_block(item, indent + 2))
            else:
                lines.append(f"{pad}{scalar(key)}: {_inline(item)}")
        return lines
    for item in value:
        if _is_collection(item) and item:
            nested = _block(item, indent + 2)
            lines.append(f"{pad}- {nested[0].lstrip()}")
            lines.extend(nested[1:])
        else:
            lines.append(f"{pad}- {_inline(item)}")
    return lines


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if _is_collection(value):
        return "[]"
    return scalar(value)


def _is_collection(value: Any) -> bool:
    return isinstance(value, Mapping) or (
        isinstance(value, Sequence) and not isinstance(value, str | bytes)
    )
