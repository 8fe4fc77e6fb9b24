"""One identity per service, the proxy's backend and the Docker bridge in data: every way to break them
is refused before the first operation, naming the field; the account check of the deploy refuses an
account that exists with another id."""

from __future__ import annotations

import copy

import pytest
from refusals import assert_refused

from kca_stack import build_stack
from kca_stack.data import group_data
from tasks.identities import id_conflicts, wanted_ids


def base_data():
    return copy.deepcopy(group_data("testhost"))


BAD_STACKS = [
    # (id, mutation, field the message must name, words the message must contain)
    (
        "a unit without an identity",
        lambda d: d["service_users"].pop("docling"),
        "service_users",
        "services.docling has no identity",
    ),
    (
        "two services share an id",
        lambda d: d["service_users"]["exaone"].update(uid=2001),
        "service_users.exaone.uid",
        "uid 2001 is also service_users.gpt-oss's",
    ),
    (
        "two services share a name",
        lambda d: d["service_users"]["exaone"].update(name="kca-gpt-oss"),
        "service_users.exaone.name",
        "is also service_users.gpt-oss's",
    ),
    (
        "a service runs as kca",
        lambda d: d["service_users"]["qwen3-vl"].update(name="kca"),
        "service_users.qwen3-vl.name",
        "is also user's",
    ),
    (
        "kca takes Dify's container uid",
        lambda d: d["user"].update(uid=1001),
        "user.uid",
        "Dify api/worker/web",
    ),
    (
        "the proxy's user is unknown",
        lambda d: d["auth_proxy"].update(user="nope"),
        "auth_proxy.user",
        "not a key of service_users",
    ),
    (
        "the backend answers beyond loopback",
        lambda d: d["services"]["hyperclova"]["backend"].update(bind="0.0.0.0"),
        "services.hyperclova.backend.bind",
        "not loopback",
    ),
    (
        "the backend takes a port of the map",
        lambda d: d["services"]["hyperclova"]["backend"].update(port=8083),
        "services.bge-embedding.ports",
        "host port 8083 is already taken by services.hyperclova.backend",
    ),
    (
        "a proxied service without a key",
        lambda d: d["services"]["hyperclova"].pop("api_key_secret"),
        "services.hyperclova.api_key_secret",
        "needs the key the proxy checks",
    ),
    (
        "no bridge name for the Docker network",
        lambda d: d["network"].pop("docker_network_bridge"),
        "network.docker_network_bridge",
        "is missing",
    ),
    (
        "a bridge name Linux refuses",
        lambda d: d["network"].update(docker_network_bridge="br-ai-network-too-long"),
        "network.docker_network_bridge",
        "not a Linux interface name",
    ),
    (
        "a wildcard for the bridge",
        lambda d: d["network"].update(docker_network_bridge="br-*"),
        "network.docker_network_bridge",
        "not a Linux interface name",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [case[1:] for case in BAD_STACKS],
    ids=[case[0] for case in BAD_STACKS],
)
def test_bad_identity_data_is_refused_naming_the_field(mutate, field, words):
    data = base_data()
    mutate(data)
    assert_refused(data, field, words)


def test_accounts_on_the_host_are_checked_against_the_data():
    stack = build_stack(group_data("testhost"))
    ids = wanted_ids(stack)
    assert ids["kca"] == stack.user.uid and ids["kca-docling"] == stack.service_users["docling"].uid
    # A host as the data wants it: nothing to say.
    matching = {name: {"uid": uid} for name, uid in ids.items()} | {"root": {"uid": 0}}
    assert id_conflicts(stack, matching) == []
    # kca made by an older deploy (useradd's next free id): refused, with the commands that fix it.
    older = matching | {"kca": {"uid": 1001}}
    problems = id_conflicts(stack, older)
    assert len(problems) == 1 and "kca exists with uid 1001" in problems[0] and "usermod -u 2000 kca" in problems[0]
    # An id the data wants, held by someone else.
    taken = {"root": {"uid": 0}, "operator": {"uid": stack.service_users["gpt-oss"].uid}}
    assert any("belongs to operator" in p for p in id_conflicts(stack, taken))
