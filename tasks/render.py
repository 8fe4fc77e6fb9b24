"""The one Jinja environment of the deploy, and the one way data becomes a JSON file: the tasks, the
unit tests and the docs render a template with the same settings, so what a test checks is what the
host gets."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parent.parent

# trim_blocks/lstrip_blocks: a {% %} line leaves no blank line behind. keep_trailing_newline and
# StrictUndefined: as pyinfra's own files.template renders, so a file rendered here has the bytes it
# had when pyinfra rendered it (a converged host stays converged).
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(ROOT)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def render(template: str, **context) -> str:
    """`template` (a path relative to the repository root) rendered with `context`."""
    return ENVIRONMENT.get_template(template).render(**context)


def json_text(data) -> str:
    """`data` as JSON with sorted keys: the same data writes the same bytes."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
