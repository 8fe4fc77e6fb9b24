"""The models disk in the rendered units: with a models device, every unit that reads /models carries
RequiresMountsFor=/models (a dead disk fails those units cleanly instead of the boot, with fstab's
nofail); where /models is a plain directory, no unit waits for a mount."""

from __future__ import annotations

import pytest

from kca_stack import build_stack
from kca_stack.data import deep_merge, group_data
from tasks import llm, support
from tasks.render import render
from tasks.units import UNIT_TEMPLATE, unit_context

SPECS = {
    "llama.cpp": llm.llama_server_spec,
    "vllm": llm.vllm_spec,
    "fastapi": support.fastapi_spec,
    "docling-serve": support.docling_spec,
}
MODELS_DEVICE = "/dev/disk/by-partlabel/models"


def unit_lines(stack, service) -> list[str]:
    spec = SPECS[service.kind](stack, service)
    text = render(UNIT_TEMPLATE, **unit_context(stack, service, spec, "test"))
    return text.splitlines()


@pytest.fixture
def production():
    return build_stack(deep_merge(group_data("production"), {"models_filesystem": {"device": MODELS_DEVICE}}))


def test_every_unit_that_reads_the_models_disk_requires_its_mount(production):
    for service in production.systemd_services():
        lines = unit_lines(production, service)
        assert "RequiresMountsFor=/models" in lines, service.name
        # In [Unit], where systemd reads it.
        assert lines.index("RequiresMountsFor=/models") < lines.index("[Service]"), service.name


def test_no_unit_waits_for_a_mount_where_models_is_a_plain_directory():
    stack = build_stack(group_data("testhost"))
    for service in stack.systemd_services():
        assert not any(line.startswith("RequiresMountsFor=") for line in unit_lines(stack, service)), service.name


def test_a_service_that_reads_nothing_under_models_does_not_wait_for_it(production):
    data = deep_merge(group_data("production"), {"models_filesystem": {"device": MODELS_DEVICE}})
    data["models"] = {**data["models"], "qwen3-vl-8b": {**data["models"]["qwen3-vl-8b"], "dir": "/opt/ai-platform/q"}}
    stack = build_stack(data)
    lines = unit_lines(stack, stack.services["qwen3-vl"])
    assert not any(line.startswith("RequiresMountsFor=") for line in lines)


def test_the_models_line_of_fstab_survives_a_dead_disk(production):
    options = production.models_filesystem.options.split(",")
    assert "nofail" in options
    assert any(option.startswith("x-systemd.device-timeout=") for option in options)
