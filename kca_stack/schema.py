"""One declaration of the data: the dataclasses of `kca_stack.model` are the schema, and this reader
turns plain group data into them by their type hints and field metadata.

A field says everything about its value in one place: its type (str, int, float, bool, None, Literal,
tuple, Mapping, a nested dataclass), its default (a dataclass default; none means required), and its
domain (`setting(...)`: a range, a pattern, a check, and the words of the fix). The reader reports
every wrong value as a `Problem` naming its path in group data, and reads on, so that one run shows
every problem.

Why a reader over `dataclasses.fields` and not pydantic: the tasks, tests and docs already read frozen
dataclasses; the messages keep this project's "field: what. Fix: how" form without translating another
library's error records; and the types stay strict (pydantic's lax mode takes "8007" as a port, its
strict mode refuses a list for a tuple).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

from .problems import Problem

# Metadata keys of `setting`.
_META = "kca"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str = "",
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    pattern: str | None = None,
    check: Callable[[Any], str | None] | None = None,
    key: str | None = None,
    from_key: bool = False,
    derived: bool = False,
) -> Any:
    """A field with its domain. `doc` says what the value is (the fix of a bad value names it);
    `ge`/`le`/`gt` bound a number; `pattern` must match a whole string; `check(value)` returns why the
    value is wrong, or None; `key` is the data's name when it differs from the attribute; `from_key`
    fills the field with the mapping key the value sits under; `derived` fields are not read at all
    (the loader computes them)."""
    meta = {
        _META: {
            "doc": doc,
            "ge": ge,
            "le": le,
            "gt": gt,
            "pattern": pattern,
            "check": check,
            "key": key,
            "from_key": from_key,
            "derived": derived,
        }
    }
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _meta(f: dataclasses.Field) -> dict[str, Any]:
    return f.metadata.get(_META, {})


def data_key(f: dataclasses.Field) -> str:
    return _meta(f).get("key") or f.name


def read_keys(cls: type) -> set[str]:
    """The data keys a dataclass reads."""
    return {
        data_key(f) for f in dataclasses.fields(cls) if not _meta(f).get("derived") and not _meta(f).get("from_key")
    }


def _from_key_field(cls: Any) -> str | None:
    """The field of `cls` filled with the mapping key its value sits under, if it has one."""
    if not dataclasses.is_dataclass(cls):
        return None
    return next((f.name for f in dataclasses.fields(cls) if _meta(f).get("from_key")), None)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (tuple, list):
        return "list"
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        return "dict"
    if dataclasses.is_dataclass(tp):
        return "dict"
    return getattr(tp, "__name__", str(tp))


def _last(where: str) -> str:
    return re.sub(r"\[\d+\]$", "", where).rsplit(".", 1)[-1]


class Reader:
    """Reads plain data into the declared types, recording a Problem (not raising) for each bad value."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, field: str, message: str, fix: str) -> None:
        self.problems.append(Problem(field, message, fix))

    # --- one value of a declared type -----------------------------------------------------------------

    def value(self, tp: Any, raw: Any, where: str, doc: str = "") -> Any:
        """`raw` as a value of `tp`, or None (with a Problem) when it is not one."""
        origin = get_origin(tp)
        if tp is Any:
            return raw
        if origin in (Union, types.UnionType):
            options = get_args(tp)
            if raw is None and type(None) in options:
                return None
            others = [o for o in options if o is not type(None)]
            if len(others) == 1:
                if raw is None:
                    return self._wrong(tp, raw, where, doc)
                return self.value(others[0], raw, where, doc)
            for option in others:
                if self._fits(option, raw):
                    return self.value(option, raw, where, doc)
            return self._wrong(tp, raw, where, doc)
        if origin is Literal:
            choices = get_args(tp)
            if raw in choices and type(raw) in {type(c) for c in choices}:
                return raw
            listed = ", ".join(str(c) for c in choices)
            self.problem(where, f"unknown {_last(where)} {raw!r}", f"use one of {listed}")
            return None
        if origin in (tuple, list):
            if not isinstance(raw, (list, tuple)):
                return self._wrong(tp, raw, where, doc)
            item_type = get_args(tp)[0] if get_args(tp) else Any
            return tuple(self.value(item_type, item, f"{where}[{i}]", doc) for i, item in enumerate(raw))
        if origin in (Mapping, dict) or tp in (Mapping, dict):
            if not isinstance(raw, Mapping):
                return self._wrong(tp, raw, where, doc)
            key_type, item_type = get_args(tp) or (Any, Any)
            named = _from_key_field(item_type)
            result = {}
            for key, item in raw.items():
                if not self._fits(key_type, key):
                    self.problem(
                        f"{where}.{key}", f"{key!r} is not a key here", f"use a key of type {_type_name(key_type)}"
                    )
                    continue
                if named:
                    result[key] = self.dataclass(item_type, item, f"{where}.{key}", given={named: key})
                else:
                    result[key] = self.value(item_type, item, f"{where}.{key}", doc)
            return result
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, raw, where)
        if tp is float:
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                return float(raw)
            return self._wrong(tp, raw, where, doc)
        if isinstance(tp, type):
            if isinstance(raw, tp) and not (isinstance(raw, bool) and tp is not bool):
                return raw
            return self._wrong(tp, raw, where, doc)
        raise TypeError(f"the schema declares a type the reader does not know: {tp!r} at {where}")

    def _fits(self, tp: Any, raw: Any) -> bool:
        if tp is Any:
            return True
        origin = get_origin(tp)
        if origin in (tuple, list):
            return isinstance(raw, (list, tuple))
        if origin in (Mapping, dict) or dataclasses.is_dataclass(tp):
            return isinstance(raw, Mapping)
        if origin is Literal:
            return raw in get_args(tp)
        if tp is float:
            return isinstance(raw, (int, float)) and not isinstance(raw, bool)
        return isinstance(tp, type) and isinstance(raw, tp) and not (isinstance(raw, bool) and tp is not bool)

    def _wrong(self, tp: Any, raw: Any, where: str, doc: str) -> None:
        expected = _type_name(tp)
        whole = " (not a whole number)" if tp is int or "int" in expected.split(" or ") else ""
        self.problem(
            where,
            f"must be {expected}, got {type(raw).__name__} {raw!r}{whole}",
            f"give {where} a value of type {expected}" + (f" ({doc})" if doc else ""),
        )
        return None

    # --- a dataclass, field by field ------------------------------------------------------------------

    def dataclass(
        self,
        cls: type,
        raw: Any,
        where: str,
        given: Mapping[str, Any] | None = None,
        ignore: set[str] = frozenset(),
        partial: bool = False,
        open_keys: bool = False,
    ) -> Any:
        """`raw` read as `cls`. `given`: fields the caller supplies (a name from the mapping key, an
        owner); `ignore`: data keys read elsewhere; `partial`: check only the keys present and return
        them as a dict (an override laid over values read before); `open_keys`: keys it does not know are
        someone else's (the inventory's own keys beside the group data)."""
        given = dict(given or {})
        if not isinstance(raw, Mapping):
            self.problem(where, f"must be a mapping, got {type(raw).__name__} {raw!r}", "write it as a dict")
            return None
        hints = _hints(cls)
        known = read_keys(cls)
        values: dict[str, Any] = {}
        ok = True
        for f in dataclasses.fields(cls):
            meta = _meta(f)
            if f.name in given:
                values[f.name] = given[f.name]
                continue
            if meta.get("derived") or meta.get("from_key"):
                continue
            key = data_key(f)
            at = f"{where}.{key}" if where else key
            if key not in raw:
                if partial:
                    continue
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    doc = meta.get("doc")
                    self.problem(
                        at, "is missing", f"add {key} to {where or 'the group data'}" + (f" ({doc})" if doc else "")
                    )
                    ok = False
                continue
            before = len(self.problems)
            value = self.value(hints[f.name], raw[key], at, meta.get("doc", ""))
            if len(self.problems) == before:
                self._domain(f, value, at)
            if len(self.problems) != before:
                ok = False
                continue
            values[f.name] = value
        for key in [] if open_keys else raw:
            if key not in known and key not in ignore and key not in given:
                self.problem(
                    f"{where}.{key}",
                    f"is not a setting of {where}",
                    f"remove it or correct its name (known: {', '.join(sorted(known))})",
                )
                ok = False
        if partial:
            return values
        if not ok:
            return None
        return cls(**values)

    def _domain(self, f: dataclasses.Field, value: Any, where: str) -> None:
        meta = _meta(f)
        if value is None:
            return
        doc = meta.get("doc") or f.name
        numbers = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []
        ge, le, gt = meta.get("ge"), meta.get("le"), meta.get("gt")
        for found in numbers:
            number = f"{found:g}" if isinstance(found, float) else str(found)
            if (ge is not None and found < ge) or (le is not None and found > le):
                if ge is not None and le is not None:
                    self.problem(where, f"{number} is outside {ge}-{le}", f"set {doc} within the range")
                elif ge is not None:
                    self.problem(where, f"{number} is below {ge}", f"set {doc} to {ge} or more")
                else:
                    self.problem(where, f"{number} is above {le}", f"set {doc} to {le} or less")
            if gt is not None and found <= gt:
                self.problem(where, f"{number} is not above {gt}", f"set {doc} above {gt}")
        pattern = meta.get("pattern")
        if isinstance(value, str):
            texts = [(where, value)]
        elif isinstance(value, tuple):
            texts = [(f"{where}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str)]
        else:
            texts = []
        for at, text in texts if pattern else []:
            if not re.fullmatch(pattern, text):
                self.problem(at, f"{text!r} is not {doc}", f"write {doc} (the form {pattern})")
        check = meta.get("check")
        if check is not None and (why := check(value)):
            self.problem(where, why, f"set {doc}")
