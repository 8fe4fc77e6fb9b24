"""The one assertion every table of bad data shares: the stack is refused, a problem names the field
and says what is wrong, and every problem says how to fix it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kca_stack import StackError, build_stack


def assert_refused(data: dict, field: str, words: str, build: Callable = build_stack) -> None:
    with pytest.raises(StackError) as refused:
        build(data)
    messages = [str(p) for p in refused.value.problems]
    assert any(m.startswith(f"{field}:") and words in m for m in messages), messages
    assert all("Fix:" in m for m in messages)
