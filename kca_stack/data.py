"""Read group_data/ the way the deploy does, for code that runs without pyinfra (unit tests, docs,
testinfra): `all.py` first, then the group's file laid over it.

Layers merge deeply: a group file that says `docker = {"pull_images": False}` changes that one value
and keeps the rest of `all.py`'s `docker` table. pyinfra itself replaces whole top-level values, so
`load_stack` merges pyinfra's layers the same way (see `merge_layers`).
"""

from __future__ import annotations

import runpy
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

GROUP_DATA = Path(__file__).resolve().parent.parent / "group_data"


def _public(namespace: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in namespace.items() if not key.startswith("_") and not isinstance(value, ModuleType)
    }


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: mappings merge key by key, anything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_layers(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Layers from the lowest precedence to the highest, merged deeply."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    return merged


def group_data(group: str = "testhost", directory: Path = GROUP_DATA) -> dict[str, Any]:
    """The data a host of `group` sees: group_data/all.py with group_data/<group>.py laid over it."""
    layers = [_public(runpy.run_path(str(directory / "all.py")))]
    group_file = directory / f"{group}.py"
    if group != "all" and group_file.exists():
        layers.append(_public(runpy.run_path(str(group_file))))
    return merge_layers(layers)
