"""Shared fixtures. The host tests read the same data as the deploy (group_data/ through kca_stack),
so a service added to the data is tested without a new test.

Target: the test host by default; the real server with `--hosts=ssh://user@server` (its group's data is
then `production`; `--kca-group` overrides).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kca_stack import build_stack  # noqa: E402
from kca_stack.data import group_data  # noqa: E402
from testhost import contract  # noqa: E402
from tools.reach import Tunnels, ssh_args  # noqa: E402

TESTHOST = contract.instance()


def pytest_addoption(parser):
    parser.addoption("--kca-group", default=None, help="group whose data describes the target (testhost|production)")


def pytest_configure(config):
    # Default target: the test host over paramiko with the key testhost/testhost generated.
    if getattr(config.option, "hosts", None) is None:
        config.option.hosts = f"paramiko://root@{TESTHOST.guest_address}"
        config.option.ssh_identity_file = str(TESTHOST.ssh_key)
    if config.option.kca_group is None:
        config.option.kca_group = "testhost" if TESTHOST.guest_address in config.option.hosts else "production"


@pytest.fixture(scope="session")
def kca_group(pytestconfig) -> str:
    return pytestconfig.option.kca_group


@pytest.fixture(scope="session")
def stack(kca_group):
    return build_stack(group_data(kca_group))


@pytest.fixture(scope="session")
def target_address(pytestconfig) -> str:
    """The address the tests reach the target's services at, from this machine."""
    spec = pytestconfig.option.hosts.split(",")[0]
    return spec.split("://", 1)[-1].split("@")[-1].split(":")[0].split("?")[0]


@pytest.fixture(scope="session")
def ssh_target(pytestconfig) -> list[str]:
    """ssh arguments that reach the target as the tests do."""
    spec = pytestconfig.option.hosts.split(",")[0].split("://", 1)[-1].split("?")[0]
    return ssh_args(spec, TESTHOST)


@pytest.fixture(scope="session")
def service_url(stack, target_address, ssh_target):
    """The URL of a service as seen from this machine (internal ones through an SSH tunnel)."""
    tunnels = Tunnels(ssh_target)

    def url(name: str) -> str:
        service = stack.services[name]
        if service.exposure == "external":
            return f"http://{target_address}:{service.port}"
        return f"http://127.0.0.1:{tunnels.local_port(service.port)}"

    yield url
    tunnels.close()


@pytest.fixture(scope="session")
def stack_service(stack):
    """A service's data as a plain dict (its settings plus the port), for tests that need limits."""

    def get(name: str) -> dict:
        service = stack.services[name]
        return {**asdict(service.settings), "port": service.port, "bind": service.bind, "unit": service.unit}

    return get


@pytest.fixture
def secret(host, stack):
    """Read a secret generated on the host (never printed by the tests)."""

    def read(name: str) -> str:
        return host.file(f"{stack.paths['secrets']}/{name}").content_string.strip()

    return read


# Parameters drawn from the stack of the target's group: add a directory, package or service to the
# data and its tests appear. Each entry: fixture name -> (values, id) from the stack.
PARAMETERS = {
    "directory": lambda s: [(d, d.path) for d in s.directories],
    "package": lambda s: [(p, p) for p in s.base_packages],
    "venv": lambda s: [(v, v.name) for v in s.venvs.values()],
    "systemd_service": lambda s: [(x, x.name) for x in s.systemd_services()],
}


def pytest_generate_tests(metafunc):
    stack = build_stack(group_data(metafunc.config.option.kca_group))
    for fixture, values_of in PARAMETERS.items():
        if fixture in metafunc.fixturenames:
            pairs = values_of(stack)
            metafunc.parametrize(fixture, [v for v, _ in pairs], ids=[i for _, i in pairs])
