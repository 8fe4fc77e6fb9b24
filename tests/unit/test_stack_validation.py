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


def set_in(*keys_and_value):
    """Set data[k1][k2]...[kn] = value (keys may be list indexes)."""
    *keys, value = keys_and_value

    def mutate(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def add_directory(path, owner, mode):
    def mutate(data):
        data["directories"].append({"path": path, "owner": owner, "mode": mode})

    return mutate


def llama(service, key, value):
    return set_in("services", service, "llama_server", key, value)


DIRECTORY_COUNT = len(group_data("testhost")["directories"])


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
        "CUDA repository key fingerprint malformed",
        lambda d: d["nvidia"]["cuda_repository"].update(key_fingerprint="EB69 3B30"),
        "nvidia.cuda_repository.key_fingerprint",
        "fingerprint",
    ),
    (
        "container toolkit key without a fingerprint",
        lambda d: d["nvidia"]["container_toolkit"].pop("key_fingerprint"),
        "nvidia.container_toolkit.key_fingerprint",
        "is missing",
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
        "is missing",
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
        "more than batching.batch_tokens 4096",
    ),
    (
        "uvicorn refuses before the queue does",
        set_load("bge-reranker", "uvicorn", "limit_concurrency", 64),
        "services.bge-reranker.uvicorn.limit_concurrency",
        "not above batching.max_queued_requests 64",
    ),
    # --- each value of its declared type, and only declared settings ---------------------------------
    (
        "a setting of another kind",
        set_in("services", "gpt-oss", "batching", {"batch_tokens": 512}),
        "services.gpt-oss.batching",
        "is not a setting of a llama.cpp service",
    ),
    (
        "a misspelt llama-server flag",
        llama("exaone", "ctx_sise", 4096),
        "services.exaone.llama_server.ctx_sise",
        "is not a setting",
    ),
    (
        "a flag of the wrong type",
        llama("exaone", "ctx_size", "4096"),
        "services.exaone.llama_server.ctx_size",
        "must be int",
    ),
    (
        "an unknown exposure",
        set_key("services", "docling", "exposure", "public"),
        "services.docling.exposure",
        "unknown exposure 'public'",
    ),
    (
        "an unknown GPU class",
        set_key("services", "qwen3-vl", "gpu", "medium"),
        "services.qwen3-vl.gpu",
        "unknown gpu 'medium'",
    ),
    (
        "an unknown protocol",
        set_in("services", "docling", "ports", 0, "protocol", "SCTP"),
        "services.docling.ports[0].protocol",
        "unknown protocol",
    ),
    (
        "an unknown flash-attention mode",
        llama("gpt-oss", "flash_attn", "yes"),
        "services.gpt-oss.llama_server.flash_attn",
        "unknown flash_attn 'yes'",
    ),
    (
        "an unknown device",
        set_key("services", "bge-embedding", "device", "rocm"),
        "services.bge-embedding.device",
        "unknown device 'rocm'",
    ),
    (
        "a directory mode written as a number",
        set_in("directories", 0, "mode", 0o755),
        "directories[0].mode",
        "must be str, got int 493",
    ),
    # --- each value in its domain: sizes, signs, lengths, modes, accounts, secret strength ----------
    (
        "a negative context",
        llama("exaone", "ctx_size", -1),
        "services.exaone.llama_server.ctx_size",
        "-1 is outside 0-",
    ),
    (
        "GPU layers that are no number",
        llama("gpt-oss", "n_gpu_layers", "all"),
        "services.gpt-oss.llama_server.n_gpu_layers",
        "is not the layers on the GPU",
    ),
    ("a zero batch", llama("gpt-oss", "batch_size", 0), "services.gpt-oss.llama_server.batch_size", "outside 1-"),
    (
        "a group override out of range",
        set_in("llama_server_overrides", "ctx_size", -2048),
        "llama_server_overrides.ctx_size",
        "outside 0-",
    ),
    (
        "vLLM reserving more than the card",
        set_key("services", "hyperclova", "gpu_memory_utilization", 1.5),
        "services.hyperclova.gpu_memory_utilization",
        "1.5 is above 1",
    ),
    (
        "vLLM reserving nothing",
        set_key("services", "hyperclova", "gpu_memory_utilization", 0),
        "services.hyperclova.gpu_memory_utilization",
        "is not above 0",
    ),
    (
        "a negative VRAM estimate",
        set_key("services", "qwen3-vl", "vram_gb", -1.0),
        "services.qwen3-vl.vram_gb",
        "outside 0-1024",
    ),
    ("no usable VRAM", lambda d: d["gpu"].update(vram_usable_gb=0), "gpu.vram_usable_gb", "is not above 0"),
    (
        "a model of no size on disk",
        set_key("models", "exaone-32b", "disk_gb", 0),
        "models.exaone-32b.disk_gb",
        "is not above 0",
    ),
    (
        "a model file of zero bytes",
        set_in("models", "exaone-32b", "files", 0, "size", 0),
        "models.exaone-32b.files[0].size",
        "0 is below 1",
    ),
    (
        "a checksum that is no sha256",
        set_in("models", "exaone-32b", "files", 0, "sha256", "abc"),
        "models.exaone-32b.files[0].sha256",
        "is not a sha256",
    ),
    (
        "an artifact with a short checksum",
        set_in("artifacts", "minilm-model", "sha256", "b9a0"),
        "artifacts.minilm-model.sha256",
        "is not the file's sha256",
    ),
    (
        "a mode that is not octal",
        set_in("directories", 0, "mode", "0855"),
        "directories[0].mode",
        "is not an octal mode",
    ),
    (
        "a relative directory",
        set_in("directories", 0, "path", "home/kca"),
        "directories[0].path",
        "is not an absolute path",
    ),
    (
        "a directory of an unknown account",
        set_in("directories", 1, "owner", "nobody"),
        "directories[1].owner",
        "'nobody' is not an account of this stack",
    ),
    (
        "an account name Linux refuses",
        set_in("service_users", "docling", "name", "Kca Docling"),
        "service_users.docling.name",
        "is not an account name",
    ),
    (
        "a service user that is root",
        set_in("service_users", "docling", "uid", 0),
        "service_users.docling.uid",
        "0 is outside 1-65533",
    ),
    (
        "a guessable secret",
        set_in("secrets", "llm-api-key", "bytes", 8),
        "secrets.llm-api-key.bytes",
        "8 is outside 16-256",
    ),
    (
        "a unit name without .service",
        set_key("services", "docling", "unit", "docling"),
        "services.docling.unit",
        "is not a systemd unit name",
    ),
    (
        "a backend port out of range",
        set_in("services", "hyperclova", "backend", "port", 70000),
        "services.hyperclova.backend.port",
        "outside 1-65535",
    ),
    (
        "a negative upload limit",
        set_key("services", "docling", "max_file_size", -1),
        "services.docling.max_file_size",
        "outside 1-",
    ),
    (
        "a key fingerprint of the wrong length",
        lambda d: d["nvidia"]["container_toolkit"].update(key_fingerprint="C95B 321B 61E8"),
        "nvidia.container_toolkit.key_fingerprint",
        "is not an OpenPGP fingerprint",
    ),
    (
        "a proxy without workers",
        set_in("auth_proxy", "worker_processes", 0),
        "auth_proxy.worker_processes",
        "outside 1-64",
    ),
    (
        "a proxy body limit nginx refuses",
        set_in("auth_proxy", "max_body", "32 MB"),
        "auth_proxy.max_body",
        "is not nginx's client_max_body_size",
    ),
    # --- each identity once --------------------------------------------------------------------------
    (
        "two services share a unit",
        set_key("services", "exaone", "unit", "llama-server-gpt-oss.service"),
        "services.exaone.unit",
        "the unit llama-server-gpt-oss.service is also services.gpt-oss.unit's",
    ),
    (
        "a service takes the proxy's unit",
        set_key("services", "docling", "unit", "kca-llm-proxy.service"),
        "auth_proxy.unit",
        "is also services.docling.unit's",
    ),
    (
        "two containers as one compose service",
        set_key("services", "dify-worker", "compose_service", "api"),
        "services.dify-worker.compose_service",
        "the compose service dify/api is also",
    ),
    (
        "two model files at one path",
        set_in("models", "qwen3-vl-8b", "files", 1, "file", "Qwen3VL-8B-Instruct-Q4_K_M.gguf"),
        "models.qwen3-vl-8b.files[1]",
        "is also models.qwen3-vl-8b.files[0]'s",
    ),
    (
        "two models in one folder",
        set_key("models", "bge-reranker-v2-m3", "dir", "/models/huggingface/bge-m3"),
        "models.bge-reranker-v2-m3.dir",
        "is also models.bge-m3.dir's",
    ),
    (
        "a directory listed twice",
        add_directory("/etc/kca/", "root", "0755"),
        f"directories[{DIRECTORY_COUNT}].path",
        "the directory /etc/kca is also",
    ),
    (
        "secret names that differ in case",
        set_in("secrets", "LLM-API-KEY", {"bytes": 32}),
        "secrets.LLM-API-KEY",
        "the secret file llm-api-key is also secrets.llm-api-key's",
    ),
    # --- what a kind's settings name exists -------------------------------------------------------------
    (
        "an unknown venv",
        set_key("services", "bge-embedding", "venv", "nope"),
        "services.bge-embedding.venv",
        "unknown venv 'nope'",
    ),
    (
        "requirements not in the repository",
        set_key("services", "docling", "requirements", "apps/nope.txt"),
        "services.docling.requirements",
        "not a file of this repository",
    ),
    (
        "an app not in the repository",
        set_in("services", "bge-reranker", "app", "src", "apps/nope.py"),
        "services.bge-reranker.app.src",
        "not a file of this repository",
    ),
    (
        "a llama.cpp service without a model",
        set_key("services", "exaone", "models", []),
        "services.exaone.models",
        "serves a model and names none",
    ),
    (
        "a relaxation for an unknown kind",
        set_in("systemd_relaxations", "podman", {"PrivateTmp": ["no", "why"]}),
        "systemd_relaxations.podman",
        "is neither a kind nor",
    ),
    (
        "a relaxation that says not why",
        set_in("systemd_relaxations", "vllm", "MemoryDenyWriteExecute", ["no", ""]),
        "systemd_relaxations.vllm.MemoryDenyWriteExecute",
        "not [value, why]",
    ),
    (
        "a stand-in with no source",
        set_in("model_standins", "bge-m3", {}),
        "model_standins.bge-m3",
        "needs either an artifact or a build",
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
