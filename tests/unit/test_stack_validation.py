"""Every impossible stack is refused with a message that names the field; the real data is accepted.

Table-driven: each case breaks the committed data in one way and names the field the refusal must
point at.
"""

import copy

import pytest
from refusals import assert_refused

from kca_stack import StackError, build_stack, load_stack
from kca_stack.data import group_data
from kca_stack.validate import moving_refs

MODELS_DEVICE = "/dev/disk/by-partlabel/models"


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


def set_directory_owner(path, owner):
    def mutate(data):
        next(d for d in data["directories"] if d["path"] == path)["owner"] = owner

    return mutate


def directory_field(path):
    index = next(i for i, d in enumerate(base_data()["directories"]) if d["path"] == path)
    return f"directories[{index}].owner"


def with_device(data: dict) -> dict:
    """`data` with the models device production.env would give."""
    data = copy.deepcopy(data)
    data["models_filesystem"]["device"] = MODELS_DEVICE
    return data


def with_models_device(**changes):
    def mutate(data):
        data["models_filesystem"].update(device=MODELS_DEVICE, **changes)

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
        "venvs under a directory kca owns",
        set_directory_owner("/models", "kca"),
        directory_field("/models"),
        "holds venvs.main, venvs.vllm, venvs.docling, which root runs, but belongs to kca",
    ),
    (
        "the main venv owned by kca",
        set_directory_owner("/models/venv", "kca"),
        directory_field("/models/venv"),
        "holds venvs.main",
    ),
    (
        "venv lock that is not in the repository",
        lambda d: d["venvs"]["main"]["locks"].update(cpu="requirements/nope.lock"),
        "venvs.main.lock",
        "requirements/nope.lock is not a file of this repository",
    ),
    (
        "models disk without nofail",
        with_models_device(options="defaults,noatime,x-systemd.device-timeout=30s"),
        "models_filesystem.options",
        "lacks nofail",
    ),
    (
        "models disk without a device timeout",
        with_models_device(options="defaults,nofail"),
        "models_filesystem.options",
        "lacks x-systemd.device-timeout",
    ),
    (
        "models device and plain directory at once",
        with_models_device(plain_directory=True),
        "models_filesystem.plain_directory",
        f"device is {MODELS_DEVICE}",
    ),
    (
        "driver branch not pinned",
        lambda d: d["nvidia"].update(driver_branch="latest"),
        "nvidia.driver_branch",
        "not a driver branch",
    ),
    (
        "driver branch too old for the card",
        lambda d: d["nvidia"].update(driver_branch="550"),
        "nvidia.driver_branch",
        "older than nvidia.driver_min_major 570",
    ),
    (
        "cuda-keyring checksum not a sha256",
        lambda d: d["nvidia"].update(cuda_keyring_sha256="abc"),
        "nvidia.cuda_keyring_sha256",
        "not a sha256",
    ),
    (
        "container toolkit key without a fingerprint",
        lambda d: d["nvidia"]["container_toolkit"].pop("key_fingerprint"),
        "nvidia.container_toolkit.key_fingerprint",
        "not an OpenPGP fingerprint",
    ),
    (
        "model file size not a number",
        lambda d: d["models"]["exaone-32b"]["files"][0].update(size="19 GB"),
        "models.exaone-32b.files[0].size",
        "must be int",
    ),
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
    assert_refused(data, field, words)


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


# What a deploy needs of its target (load_stack, as deploy.py calls it), beyond consistent data.
BAD_TARGETS = [
    # (id, group, mutation, field, words)
    (
        "SSH port of the firewall differs from the connection's",
        "testhost",
        lambda d: d.update(ssh_port=2222),
        "network.ssh_port",
        "is 22, but the deploy connects on port 2222",
    ),
    (
        "production with no models device",
        "production",
        lambda d: d["models_filesystem"].update(device=None),
        "models_filesystem.device",
        "no device is configured for /models",
    ),
    (
        "test host that does not say /models is a plain directory",
        "testhost",
        lambda d: d["models_filesystem"].update(plain_directory=False),
        "models_filesystem.device",
        "plain_directory is not set",
    ),
]


@pytest.mark.parametrize(
    ("group", "mutate", "field", "words"),
    [case[1:] for case in BAD_TARGETS],
    ids=[case[0] for case in BAD_TARGETS],
)
def test_bad_target_is_refused_naming_the_field(group, mutate, field, words):
    data = copy.deepcopy(group_data(group))
    if group == "production":
        data["models_filesystem"]["device"] = MODELS_DEVICE
    mutate(data)
    assert_refused(data, field, words, build=load_stack)


def test_the_deploy_accepts_the_committed_targets():
    assert load_stack({**group_data("testhost"), "ssh_port": 22}).models_filesystem.plain_directory
    production = load_stack({**with_device(group_data("production")), "ssh_port": 22})
    assert production.models_filesystem.device == MODELS_DEVICE


def test_production_lists_every_ref_that_still_moves():
    stack = build_stack(with_device(group_data("production")))
    refs = moving_refs(stack)
    assert "models.gpt-oss-20b.files[0].revision = 'main' (a branch: pin the commit)" in refs
    assert "models.bge-m3.files[0].revision = 'main' (a branch: pin the commit)" in refs
    assert "models.exaone-32b.files[0].sha256 = None (verified by the hub's own checksum only)" in refs
    assert "vllm.plugin.git_ref = 'main' (a branch: pin the commit)" in refs
    assert any(r.startswith("openwebui: ghcr.io/open-webui/open-webui:v0.12.4") for r in refs)
    assert "nvidia.cuda_keyring_sha256 = None (the keyring is not fetched until it is set)" in refs
    # llama.cpp is pinned at a commit: not listed.
    assert not any(r.startswith("llama_cpp.") for r in refs)


def test_a_ref_pinned_to_a_commit_is_not_listed():
    data = {**copy.deepcopy(group_data("production")), "models_device": MODELS_DEVICE}
    data["models"]["gpt-oss-20b"]["files"][0].update(revision="0" * 40, sha256="1" * 64)
    refs = moving_refs(build_stack(data))
    assert not any(r.startswith("models.gpt-oss-20b.") for r in refs)


def test_the_test_host_fetches_nothing_by_a_moving_ref_of_the_models():
    refs = moving_refs(build_stack(group_data("testhost")))
    assert not any(r.startswith(("models.", "vllm.", "openwebui", "nvidia.")) for r in refs), refs
