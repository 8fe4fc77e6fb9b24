"""docs/server.md is generated from the data and must be up to date; it carries the document's port
map with the same external/internal split and the VRAM scenarios with their sums."""

import re

import pytest

from kca_stack import build_stack
from kca_stack.data import group_data
from kca_stack.docs import DOC_PATH, main, render

# The design document's port map (section 7): port -> reachable from outside.
DESIGN_PORT_MAP = {
    8080: True,
    8081: True,
    8082: True,
    8084: True,
    8006: False,
    8007: False,
    8083: False,
    80: True,
    443: True,
    3002: True,
    5001: True,
    5003: False,
    5432: False,
    6379: False,
    3128: False,
    3000: False,
}


def test_committed_docs_are_up_to_date():
    assert main(["--check"]) == 0, "docs/server.md is out of date: run ./kca docs"


def port_rows(text: str) -> dict[int, bool]:
    section = text.split("## Port map", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0].isdigit():
            rows[int(cells[0])] = cells[3] == "yes"
    return rows


def test_docs_port_map_matches_the_design_document():
    assert port_rows(DOC_PATH.read_text()) == DESIGN_PORT_MAP


@pytest.mark.parametrize("scenario", ["A", "B", "C", "D"])
def test_docs_show_each_vram_scenario_with_its_sum(scenario):
    stack = build_stack(group_data("production"))
    text = render(stack)
    row = next(line for line in text.splitlines() if re.match(rf"\| {scenario}( |\b)", line))
    assert f"{stack.scenario_vram_gb(stack.scenarios[scenario]):g} GB" in row
    assert f"{stack.scenario_headroom_gb(stack.scenarios[scenario]):g} GB" in row
