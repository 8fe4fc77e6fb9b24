"""The systemd units rendered from the data, without a host: command lines built as argument lists,
the GPU rule as Conflicts=, the GPU condition, hardening with every relaxation explained."""

from __future__ import annotations

import ipaddress
import shlex

import pytest

from kca_stack import build_stack
from kca_stack.data import group_data
from kca_stack.kinds import KINDS
from tasks import llm
from tasks.render import render as render_template
from tasks.units import UNIT_TEMPLATE, task, unit_context, unit_spec
from tasks.util import systemd_command_line, systemd_quote


def render(stack, service) -> str:
    """The unit as pyinfra renders it: the same template, the same context, the spec its kind names."""
    spec = unit_spec(stack, service)
    return render_template(UNIT_TEMPLATE, **unit_context(stack, service, spec, "test"))


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture(params=["testhost", "production"])
def stack(request):
    return build_stack(group_data(request.param))


def test_every_unit_listens_where_the_data_says(stack):
    for service in stack.systemd_services():
        exec_start = directives(render(stack, service))["ExecStart"][0]
        argv = shlex.split(exec_start.replace("$$", "$"))
        joined = " ".join(argv)
        bind, port = stack.listen_address(service)
        assert f"--port {port}" in joined, (service.name, exec_start)
        assert f"--host {bind}" in joined, (service.name, exec_start)


def test_vllm_listens_on_loopback_behind_the_proxy(stack):
    hyperclova = stack.services["hyperclova"]
    assert hyperclova in stack.proxied_services()
    bind, port = stack.listen_address(hyperclova)
    assert ipaddress.ip_address(bind).is_loopback
    # The port map is unchanged: 8082 is external, and it is the proxy's.
    assert hyperclova.port == 8082 and hyperclova.exposure == "external" and port != hyperclova.port


def test_units_beyond_loopback_require_the_firewall(stack):
    for service in stack.systemd_services():
        found = directives(render(stack, service))
        bind, _ = stack.listen_address(service)
        beyond_loopback = not ipaddress.ip_address(bind).is_loopback
        assert ("kca-firewall.service" in found.get("Requires", [])) == beyond_loopback, service.name
        assert ("kca-firewall.service" in found.get("After", [])) == beyond_loopback, service.name
    # The internal services on the wildcard address are the reason: they must be among them.
    assert "kca-firewall.service" in directives(render(stack, stack.services["bge-embedding"]))["Requires"]


def test_one_identity_per_unit(stack):
    users = {}
    for service in stack.systemd_services():
        found = directives(render(stack, service))
        assert found["User"] == found["Group"] == [stack.service_users[service.name].name], service.name
        assert found["ProtectProc"] == ["invisible"], service.name
        users[service.name] = found["User"][0]
    assert len(set(users.values())) == len(users), users
    assert stack.user.name not in users.values()
    uids = [u.uid for u in stack.service_users.values()] + [stack.user.uid]
    assert len(set(uids)) == len(uids)
    # Dify's containers write their volumes as 1001: no host account may be 1001.
    assert 1001 in stack.container_uids and 1001 not in uids


def test_conflicts_and_gpu_condition(stack):
    for service in stack.systemd_services():
        found = directives(render(stack, service))
        conflicts = set(" ".join(found.get("Conflicts", [])).split())
        assert conflicts == {c.unit for c in stack.conflicts_of(service)}
        has_condition = f"{stack.gpu.device_node}" in found.get("ConditionPathExists", [])
        assert has_condition == stack.unit_needs_gpu(service)
    hyperclova = stack.services["hyperclova"]
    assert {s.unit for s in stack.conflicts_of(hyperclova)} >= {
        stack.services[n].unit for n in ("gpt-oss", "exaone", "qwen3-vl", "bge-embedding", "bge-reranker")
    }


def test_every_relaxation_says_why(stack):
    for service in stack.systemd_services():
        lines = render(stack, service).splitlines()
        for index, line in enumerate(lines):
            key = line.split("=", 1)[0]
            baseline = stack.systemd_hardening.get(key)
            if baseline is not None and "=" in line and line.split("=", 1)[1] != baseline:
                assert lines[index - 1].startswith("# relaxed: "), (service.name, line)


def test_secrets_reach_units_as_credentials_only(stack):
    for service in stack.systemd_services():
        text = render(stack, service)
        secret = service.api_key_secret
        if secret:
            assert f"LoadCredential={secret}:{stack.paths['secrets']}/{secret}" in text
            assert f"{stack.paths['secrets']}/{secret}" not in directives(text)["ExecStart"][0]


def test_llama_server_flags_come_from_the_data():
    stack = build_stack(group_data("production"))
    argv = llm.llama_server_argv(stack, stack.services["qwen3-vl"])
    assert argv[argv.index("--mmproj") + 1] == stack.models["qwen3-vl-8b"].path_of("mmproj")
    assert argv[argv.index("--api-key-file") + 1] == "%d/llm-api-key"
    gpt = llm.llama_server_argv(stack, stack.services["gpt-oss"])
    assert gpt[gpt.index("--chat-template-kwargs") + 1] == '{"reasoning_effort": "high"}'
    test = build_stack(group_data("testhost"))
    cpu = llm.llama_server_argv(test, test.services["gpt-oss"])
    assert cpu[cpu.index("--n-gpu-layers") + 1] == "0"
    assert "--mmproj" not in llm.llama_server_argv(test, test.services["qwen3-vl"])


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [("plain-arg", "plain-arg"), ("100%", "'100%%'"), ("$HOME", "'$$HOME'"), ('{"a": 1}', "'{\"a\": 1}'")],
)
def test_systemd_quoting(arg, quoted):
    assert systemd_quote(arg) == quoted
    assert systemd_command_line(["x", "%d/key"], keep_specifiers=("%d/key",)) == "x %d/key"


def test_every_kind_names_task_functions_that_exist():
    """The registry is the one place a kind is described: what it names must be there, and every unit
    kind says how its unit is built."""
    for kind in KINDS.values():
        for name in (kind.prepare, kind.install, kind.unit_spec):
            if name is not None:
                assert callable(task(name)), (kind.name, name)
        assert (kind.unit_spec is not None) == kind.systemd, kind.name
        assert kind.layer in ("llm", "support", "apps"), kind.name


def test_open_webui_lists_the_llm_kinds_of_the_registry():
    stack = build_stack(group_data("production"))
    backends = [s.name for s in stack.llm_backends()]
    assert backends == ["gpt-oss", "exaone", "hyperclova", "qwen3-vl"]
    assert all(KINDS[stack.services[name].kind].llm_backend for name in backends)
