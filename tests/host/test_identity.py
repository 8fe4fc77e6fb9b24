"""One identity per service on the target: each unit runs as its own user with the fixed id of the
data; as each service's user, reading another service's secret fails, while reading its own works
(so the failures are permissions, not missing files); a running service sees no other service's
processes (ProtectProc=invisible), and cannot read their environment (vLLM's and Docling's keys)."""

from __future__ import annotations

import pytest

from tasks import proxy
from tasks.identities import NOLOGIN


def units(stack) -> list[tuple[str, str, str, list[str]]]:
    """(service key, unit, user, credential names) for every unit with an identity."""
    rows = []
    for service in stack.systemd_services():
        secret = service.api_key_secret
        rows.append((service.name, service.unit, stack.service_users[service.name].name, [secret] if secret else []))
    if stack.proxied_services():
        names = [proxy.key_map_name(s) for s in proxy.proxy_secrets(stack)]
        key = stack.auth_proxy.user
        rows.append((key, stack.auth_proxy.unit, stack.service_users[key].name, names))
    return rows


def main_pid(host, unit: str) -> int:
    return int(host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip() or 0)


def as_user(user: str, command: str, namespace_of: int = 0) -> str:
    """`command` run as `user` with that user's groups only; inside the mount namespace of a running
    service's process when given (its own /proc, /run/credentials and read-only system)."""
    drop = f"setpriv --reuid={user} --regid={user} --init-groups -- sh -c '{command}'"
    return f"nsenter -t {namespace_of} -m {drop}" if namespace_of else drop


def test_kca_has_its_fixed_uid(host, stack):
    account = host.user(stack.user.name)
    assert account.exists and account.uid == stack.user.uid
    assert account.uid not in stack.container_uids


def test_each_unit_runs_as_its_own_user(host, stack):
    seen = {}
    for key, unit, user, _ in units(stack):
        identity = stack.service_users[key]
        account = host.user(user)
        assert account.exists, user
        assert (account.uid, account.gid, account.shell) == (identity.uid, identity.uid, NOLOGIN), user
        assert host.run(f"systemctl show -p User --value {unit}").stdout.strip() == user, unit
        assert host.run(f"systemctl show -p ProtectProc --value {unit}").stdout.strip() == "invisible", unit
        pid = main_pid(host, unit)
        if pid:
            assert host.run(f"stat -c %U /proc/{pid}").stdout.strip() == user, unit
        seen[unit] = user
    assert len(set(seen.values())) == len(seen), seen


def test_a_service_reads_no_other_services_secret(host, stack):
    rows = units(stack)
    running = {unit: main_pid(host, unit) for _, unit, _, _ in rows}
    assert any(running.values()), "no service with an identity runs: nothing to check against"
    checked = 0
    for _, unit, user, credentials in rows:
        # Positive control: the service reads its own credential (only while it runs).
        if running[unit]:
            for name in credentials:
                own = host.run(as_user(user, f"cat /run/credentials/{unit}/{name} >/dev/null"))
                assert own.rc == 0, f"{user} cannot read its own {name}: {own.stderr}"
        for _, other_unit, _, other_credentials in rows:
            if other_unit == unit:
                continue
            for name in other_credentials:
                for namespace in {0, running[unit]}:
                    attempt = host.run(as_user(user, f"cat /run/credentials/{other_unit}/{name}", namespace))
                    assert attempt.rc != 0 and not attempt.stdout, f"{user} read {other_unit}'s {name}"
                    checked += 1
        # The secret files themselves are root's.
        for name in stack.secrets:
            attempt = host.run(as_user(user, f"cat {stack.paths['secrets']}/{name}", running[unit]))
            assert attempt.rc != 0 and not attempt.stdout, f"{user} read the secret file {name}"
    assert checked, "no pair of services to check"


def test_a_service_sees_no_other_services_processes(host, stack):
    running = [(unit, user, main_pid(host, unit)) for _, unit, user, _ in units(stack)]
    running = [row for row in running if row[2]]
    if len(running) < 2:
        pytest.skip("fewer than two services with an identity run here")
    for unit, user, pid in running:
        listed = host.run(as_user(user, "ls /proc", pid)).stdout.split()
        for other_unit, _, other_pid in running:
            if other_unit == unit:
                continue
            assert str(other_pid) not in listed, f"{unit} sees {other_unit}'s process {other_pid}"
            environ = host.run(as_user(user, f"cat /proc/{other_pid}/environ"))
            assert environ.rc != 0 and not environ.stdout, f"{user} read {other_unit}'s environment"
        # Control: its own process is there.
        assert str(pid) in listed, f"{unit} cannot see itself: the check would prove nothing"
