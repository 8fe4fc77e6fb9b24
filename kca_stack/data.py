"""Read group_data/ the way pyinfra does, for code that runs without pyinfra (unit tests, docs,
testinfra): `all.py` first, then the group's file on top, as pyinfra's precedence has it."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import ModuleType
from typing import Any

GROUP_DATA = Path(__file__).resolve().parent.parent / "group_data"


def _public(namespace: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in namespace.items() if not key.startswith("_") and not isinstance(value, ModuleType)
    }


def group_data(group: str = "testhost", directory: Path = GROUP_DATA) -> dict[str, Any]:
    """The data a host of `group` sees: group_data/all.py overlaid with group_data/<group>.py."""
    data = _public(runpy.run_path(str(directory / "all.py")))
    group_file = directory / f"{group}.py"
    if group != "all" and group_file.exists():
        data.update(_public(runpy.run_path(str(group_file))))
    return data
