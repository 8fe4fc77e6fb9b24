"""Every impossible stack is refused with a message that names the field; the real data is accepted.

Table-driven: each case breaks the committed data in one way and names the field the refusal must
point at.
"""

import copy

import pytest

from kca_stack import StackError, build_stack
from kca_stack.data import group_data


def base_data():
    return copy.deepcopy(group_data("testhost"))


def set_port(service, port):
    def mutate(data):
        data["services"][service]["ports"][0]["port"] = port

    return mutate


def set_key(section, name, key, value):
    def mutate(data):
        data[section][name][key] = value

    return mutate


def add_to_scenario(scenario, service):
    def mutate(data):
        data["vram_scenarios"][scenario]["services"].append(service)

    return mutate


def set_load(service, section, key, value):
    def mutate(data):
        data["services"][service][section][key] = value

    return mutate


def set_path(key, value):
    def mutate(data):
        data["paths"][key] = value

    return mutate


BAD_STACKS = [
    # (id, mutation, field the message must name, words the message must contain)
    ("two services on one port", set_port("exaone", 8080), "services.exaone.ports", "8080 is already taken"),
    ("port collides with ssh", set_port("docling", 22), "services.docling.ports", "already taken by network.ssh_port"),
    ("port above 65535", set_port("qwen3-vl", 70000), "services.qwen3-vl.ports[0].port", "outside 1-65535"),
    ("port zero", set_port("bge-reranker", 0), "services.bge-reranker.ports[0].port", "outside 1-65535"),
    (
        "published Weaviate collides with GPT-OSS",
        set_key("services", "dify-weaviate", "ports", [{"port": 8080, "protocol": "HTTP", "container_port": 8080}]),
        "services.dify-weaviate.ports",
        "8080 is already taken by services.gpt-oss",
    ),
    (
        "internal service on a public address",
        set_key("services", "bge-embedding", "bind", "8.8.8.8"),
        "services.bge-embedding.bind",
        "public address",
    ),
    (
        "internal service on the wildcard without a firewall",
        lambda d: d["firewall"].update(enabled=False),
        "services.docling.bind",
        "firewall.enabled is false",
    ),
    (
        "external service on loopback",
        set_key("services", "gpt-oss", "bind", "127.0.0.1"),
        "services.gpt-oss.bind",
        "unreachable from outside",
    ),
    ("bind not an address", set_key("services", "docling", "bind", "localhost"), "services.docling.bind", "not an IP"),
    (
        "scenario does not fit",
        set_key("services", "gpt-oss", "vram_gb", 26.0),
        "vram_scenarios.A.services",
        "only 30.75 GB are usable",
    ),
    (
        "HyperCLOVA X with a small service",
        add_to_scenario("C", "bge-embedding"),
        "vram_scenarios.C.services",
        "only 30.75 GB are usable",
    ),
    ("two large models", add_to_scenario("A", "exaone"), "vram_scenarios.A.services", "2 large models"),
    ("unknown service in a scenario", add_to_scenario("D", "nope"), "vram_scenarios.D.services", "unknown service"),
    (
        "non-GPU service in a scenario",
        add_to_scenario("D", "docling"),
        "vram_scenarios.D.services",
        "does not use the GPU",
    ),
    (
        "unknown model",
        set_key("services", "exaone", "models", ["exaone-99b"]),
        "services.exaone.models",
        "unknown model 'exaone-99b'",
    ),
    (
        "large model in no scenario",
        lambda d: d["vram_scenarios"].pop("B"),
        "services.exaone.gpu",
        "no VRAM scenario holds",
    ),
    (
        "unknown boot scenario",
        lambda d: d["gpu"].update(boot_scenario="Z"),
        "gpu.boot_scenario",
        "unknown scenario 'Z'",
    ),
    (
        "path outside the roots",
        set_path("llama_cpp", "/srv/llama.cpp"),
        "paths.llama_cpp",
        "outside the document's roots",
    ),
    ("path escaping a root", set_path("openwebui", "/home/kca/../../etc"), "paths.openwebui", "outside"),
    (
        "model dir outside the roots",
        set_key("models", "exaone-32b", "dir", "/data/exaone"),
        "models.exaone-32b.dir",
        "outside",
    ),
    (
        "missing secret",
        set_key("services", "gpt-oss", "api_key_secret", "nope"),
        "services.gpt-oss.api_key_secret",
        "undeclared secret 'nope'",
    ),
    (
        "llama.cpp archive that does not exist",
        lambda d: d["llama_cpp"].update(source="archive", archive="nope"),
        "llama_cpp.archive",
        "unknown artifact",
    ),
    ("unknown kind", set_key("services", "docling", "kind", "podman"), "services.docling.kind", "unknown kind"),
    ("missing unit", set_key("services", "docling", "unit", None), "services.docling.unit", "needs a systemd unit"),
    ("port not a number", set_port("docling", "8007"), "services.docling.ports[0].port", "must be int"),
    ("missing exposure", lambda d: d["services"]["docling"].pop("exposure"), "services.docling.exposure", "missing"),
    (
        "no CPU thread for the forward pass",
        set_key("services", "bge-reranker", "threads", 0),
        "services.bge-reranker.threads",
        "outside 1-256",
    ),
    (
        "no token budget per forward pass",
        set_load("bge-embedding", "batching", "batch_tokens", 0),
        "services.bge-embedding.batching.batch_tokens",
        "outside 1-",
    ),
    (
        "a batching wait that is not short",
        set_load("bge-reranker", "batching", "wait_ms", 500),
        "services.bge-reranker.batching.wait_ms",
        "outside 0-100",
    ),
    (
        "queue bound not a number",
        set_load("bge-embedding", "batching", "max_queued_requests", "64"),
        "services.bge-embedding.batching.max_queued_requests",
        "not a whole number",
    ),
    (
        "request token cap missing",
        lambda d: d["services"]["bge-reranker"]["limits"].pop("max_request_tokens"),
        "services.bge-reranker.limits.max_request_tokens",
        "is None",
    ),
    (
        "negative body timeout",
        set_load("bge-embedding", "limits", "body_timeout_s", -1),
        "services.bge-embedding.limits.body_timeout_s",
        "outside 1-600",
    ),
    (
        "a text longer than a forward pass",
        set_load("bge-embedding", "limits", "max_text_tokens", 16384),
        "services.bge-embedding.limits.max_text_tokens",
        "more than batching.batch_tokens 8192",
    ),
    (
        "uvicorn refuses before the queue does",
        set_load("bge-reranker", "uvicorn", "limit_concurrency", 64),
        "services.bge-reranker.uvicorn.limit_concurrency",
        "not above batching.max_queued_requests 64",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [case[1:] for case in BAD_STACKS],
    ids=[case[0] for case in BAD_STACKS],
)
def test_bad_stack_is_refused_naming_the_field(mutate, field, words):
    data = base_data()
    mutate(data)
    with pytest.raises(StackError) as refused:
        build_stack(data)
    messages = [str(p) for p in refused.value.problems]
    assert any(m.startswith(f"{field}:") and words in m for m in messages), messages
    assert all("Fix:" in m for m in messages)


@pytest.mark.parametrize("group", ["testhost", "production"])
def test_committed_data_is_a_valid_stack(group):
    stack = build_stack(group_data(group))
    assert stack.services


def test_every_problem_is_reported_at_once():
    data = base_data()
    set_port("exaone", 8080)(data)
    set_key("services", "bge-embedding", "bind", "8.8.8.8")(data)
    with pytest.raises(StackError) as refused:
        build_stack(data)
    fields = {p.field for p in refused.value.problems}
    assert {"services.exaone.ports", "services.bge-embedding.bind"} <= fields
