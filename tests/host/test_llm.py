"""The LLM layer on the target, parametrised from the stack: units valid, enabled as the data says,
listening where it says; each llama.cpp service answers a real chat completion; the GPU switch moves
between large models and refuses what does not fit."""

from __future__ import annotations

import json

import pytest
import requests

from kca_stack import Stack


def llm_services(stack: Stack, kind: str):
    return [s for s in stack.services.values() if s.kind == kind]


def test_llama_server_binary_is_the_pinned_build(host, stack):
    from tasks.llama_cpp import binary, build_id, layout

    assert host.file(binary(stack)).mode == 0o755
    assert host.file(layout(stack)["build_id"]).content_string.strip() == build_id(stack)
    version = host.run(f"{binary(stack)} --version")
    assert version.rc == 0, version.stderr
    # The binary is static: no libllama/libggml to keep in step.
    assert "libllama" not in host.run(f"ldd {binary(stack)} || true").stdout


def test_unit_is_valid(host, stack, systemd_service):
    unit = host.service(systemd_service.unit)
    assert unit.is_valid, f"systemd-analyze verify {systemd_service.unit} failed"


def test_unit_enabled_as_data_says(host, stack, systemd_service):
    unit = host.service(systemd_service.unit)
    expected = stack.starts_at_boot(systemd_service) and stack.runnable_here(systemd_service)
    assert unit.is_enabled == expected


def test_gpu_only_units_carry_the_gpu_condition(host, stack, systemd_service):
    content = host.file(f"{stack.paths['units']}/{systemd_service.unit}").content_string
    condition = f"ConditionPathExists={stack.gpu.device_node}"
    assert (condition in content) == stack.unit_needs_gpu(systemd_service)


def test_conflicts_follow_the_vram_scenarios(host, stack, systemd_service):
    content = host.file(f"{stack.paths['units']}/{systemd_service.unit}").content_string
    declared = set()
    for line in content.splitlines():
        if line.startswith("Conflicts="):
            declared |= set(line.split("=", 1)[1].split())
    assert declared == {c.unit for c in stack.conflicts_of(systemd_service)}


def test_vllm_unit_skipped_without_gpu(host, stack):
    for service in llm_services(stack, "vllm"):
        if stack.gpu.present:
            pytest.skip("this host has the GPU")
        result = host.run(f"systemctl start {service.unit}; systemctl show -p ConditionResult {service.unit}")
        assert "ConditionResult=no" in result.stdout
        assert not host.service(service.unit).is_running


def test_vllm_venv_imports_the_pinned_vllm(host, stack):
    venv = stack.venvs[stack.vllm.venv].path
    wanted = next(p for p in stack.vllm.packages if p.startswith("vllm=="))
    result = host.run(f"{venv}/bin/python -c 'import vllm; print(vllm.__version__)'")
    assert result.rc == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == wanted.split("==")[1]


def test_hcx_plugin_entry_points(host, stack):
    plugin = stack.vllm.plugin
    if plugin.source == "unavailable":
        pytest.skip("vllm.plugin.source is 'unavailable' on this host (its repository cannot be reached)")
    venv = stack.venvs[stack.vllm.venv].path
    script = (
        "from importlib.metadata import entry_points; "
        f"print([e.name for e in entry_points(group='{plugin.entry_point_group}')])"
    )
    result = host.run(f'{venv}/bin/python -c "{script}"')
    assert result.rc == 0 and "hcx" in result.stdout.lower(), result.stdout + result.stderr


def switch(host, *targets):
    return host.run("kca-gpu-switch " + " ".join(targets))


def api_headers(secret, service) -> dict:
    name = service.api_key_secret
    return {"Authorization": f"Bearer {secret(name)}"} if name else {}


@pytest.mark.parametrize("name", ["gpt-oss", "exaone", "qwen3-vl"])
def test_llama_service_answers_a_chat_completion(host, stack, secret, service_url, name):
    service = stack.services[name]
    if not stack.runnable_here(service):
        pytest.skip("needs the GPU")
    result = switch(host, name)
    assert result.rc == 0, result.stdout + result.stderr
    response = requests.post(
        f"{service_url(name)}/v1/chat/completions",
        headers=api_headers(secret, service),
        json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] or body["choices"][0]["message"].get("reasoning_content")
    assert body["model"] == stack.llama_server_settings(service).alias or name


def test_llama_service_rejects_a_request_without_the_key(stack, service_url):
    service = stack.services["qwen3-vl"]
    if not service.api_key_secret:
        pytest.skip("no API key configured")
    response = requests.post(
        f"{service_url('qwen3-vl')}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )
    assert response.status_code == 401


def test_switch_moves_the_gpu_between_large_models(host, stack):
    first, second = [s for s in stack.large_services() if stack.runnable_here(s)][:2]
    assert switch(host, first.name).rc == 0
    assert host.service(first.unit).is_running
    result = switch(host, second.name)
    assert result.rc == 0, result.stdout + result.stderr
    assert host.service(second.unit).is_running
    assert not host.service(first.unit).is_running
    print(result.stdout)


def test_switch_refuses_what_does_not_fit(host, stack):
    # The largest scenario plus every small service beside it exceeds the usable VRAM by the data.
    largest = max(stack.large_services(), key=stack.service_vram_gb)
    small = [s.name for s in stack.services.values() if s.gpu == "small"]
    before = host.run("systemctl list-units --state=active --no-legend 'llama-server-*' 'vllm-*' 'bge-*'").stdout
    result = switch(host, largest.name, *small)
    assert result.rc == 3, result.stdout
    assert "does not fit" in result.stdout
    after = host.run("systemctl list-units --state=active --no-legend 'llama-server-*' 'vllm-*' 'bge-*'").stdout
    assert before == after, "a refused switch must change nothing"


def test_switch_refuses_two_large_models(host, stack):
    a, b = stack.large_services()[:2]
    result = switch(host, a.name, b.name)
    assert result.rc == 3 and "large models" in result.stdout


def test_switch_refuses_gpu_only_service_without_gpu(host, stack):
    if stack.gpu.present:
        pytest.skip("this host has the GPU")
    vllm = llm_services(stack, "vllm")[0]
    result = switch(host, vllm.name)
    assert result.rc == 4 and "need the GPU" in result.stdout


def test_switch_data_matches_the_stack(host, stack):
    installed = json.loads(host.file("/etc/kca/gpu-scenarios.json").content_string)
    assert installed["usable_vram_gb"] == stack.gpu.vram_usable_gb
    assert installed["scenarios"] == {s.name: list(s.services) for s in stack.scenarios.values()}


@pytest.fixture(scope="module", autouse=True)
def restore_boot_scenario(host, stack):
    """Leave the GPU as the boot scenario has it, whatever the switch tests did."""
    yield
    boot = stack.gpu.boot_scenario
    host.run(f"kca-gpu-switch {boot}")
