"""The generic reader of the declarations (kca_stack.schema): strict types, defaults, domains, and
every problem of one value named by its path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from kca_stack.schema import Reader, setting


@dataclass(frozen=True)
class Inner:
    size: int = setting(doc="a size in bytes", ge=1)


@dataclass(frozen=True)
class Outer:
    name: str = setting(from_key=True)
    mode: Literal["on", "off"] = setting(doc="the mode")
    ratio: float = setting(0.5, doc="a fraction", gt=0, le=1)
    tags: tuple[str, ...] = setting((), doc="short names", pattern=r"[a-z]+")
    inner: Inner = setting(Inner(size=1), doc="the inner part")


def read(raw):
    reader = Reader()
    value = reader.dataclass(Outer, raw, "outer.x", given={"name": "x"})
    return value, [str(p) for p in reader.problems]


def test_a_valid_value_is_read_with_its_defaults_and_lists_as_tuples():
    value, problems = read({"mode": "on", "tags": ["a", "b"], "ratio": 1})
    assert problems == []
    assert value == Outer(name="x", mode="on", ratio=1.0, tags=("a", "b"), inner=Inner(size=1))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, "outer.x.mode: is missing"),
        ({"mode": "maybe"}, "outer.x.mode: unknown mode 'maybe'"),
        ({"mode": "on", "ratio": True}, "outer.x.ratio: must be float, got bool True"),
        ({"mode": "on", "ratio": "0.5"}, "outer.x.ratio: must be float, got str '0.5'"),
        ({"mode": "on", "ratio": 0}, "outer.x.ratio: 0 is not above 0"),
        ({"mode": "on", "tags": ["ok", "Not ok"]}, "outer.x.tags[1]: 'Not ok' is not short names"),
        ({"mode": "on", "inner": {"size": "8"}}, "outer.x.inner.size: must be int, got str '8'"),
        ({"mode": "on", "inner": {"size": 0}}, "outer.x.inner.size: 0 is below 1"),
        ({"mode": "on", "inner": {"sise": 8}}, "outer.x.inner.sise: is not a setting of outer.x.inner"),
    ],
)
def test_each_bad_value_is_named_by_its_path(raw, expected):
    value, problems = read(raw)
    assert value is None
    assert any(p.startswith(expected) for p in problems), problems
    assert all("Fix:" in p for p in problems)


def test_every_bad_value_of_one_mapping_is_reported():
    _, problems = read({"mode": "maybe", "ratio": 2, "inner": {"size": -1}, "extra": 1})
    fields = {p.split(":", 1)[0] for p in problems}
    assert fields == {"outer.x.mode", "outer.x.ratio", "outer.x.inner.size", "outer.x.extra"}


def test_a_partial_read_checks_only_the_keys_given():
    reader = Reader()
    assert reader.dataclass(Outer, {"ratio": 0.25}, "override", partial=True) == {"ratio": 0.25}
    assert reader.dataclass(Outer, {"ratio": 3}, "override", partial=True) == {}
    assert [p.field for p in reader.problems] == ["override.ratio"]
