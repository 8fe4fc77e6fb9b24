"""Which host the deploy targets.

- `production`: the real GPU server. Its address and SSH user are site-specific, so they come from an
  untracked `production.env` beside this file (KEY=VALUE lines) or from the environment:
  KCA_PRODUCTION_HOST (required), KCA_PRODUCTION_USER (default root), KCA_PRODUCTION_PORT (default 22),
  KCA_PRODUCTION_KEY (optional SSH key file).
- `testhost`: the disposable Debian 12 host that `testhost/testhost up` boots (a systemd-nspawn
  container, or a QEMU virtual machine with `--backend vm`); its address and key are the contract in
  testhost/contract.py (KCA_TESTHOST_INSTANCE selects one of several side by side).

The backup repository's password comes from the operator, never from the server: KCA_BACKUP_PASSWORD in
production.env or the environment (with KCA_BACKUP_REPOSITORY). For the test host the control machine
keeps one in the test host's state folder, generated once, so it outlives every test host.

When no production host is configured, the inventory holds only the test host: that is the embedded
default. KCA_TARGET=testhost forces the test host even when production is configured.
`python inventory.py` prints the selected target's name.
"""

import os
import secrets
from pathlib import Path

import site_settings
from testhost import contract

_HERE = Path(__file__).resolve().parent


_SETTINGS = site_settings.read()
# Keep the environment in step: the backup task reads the repository password from it.
for _key, _value in _SETTINGS.items():
    os.environ.setdefault(_key, _value)

TESTHOST = contract.instance(_SETTINGS)

_target = _SETTINGS.get("KCA_TARGET") or ("production" if _SETTINGS.get("KCA_PRODUCTION_HOST") else "testhost")

production = []
testhost = []


def _testhost_backup_password() -> str:
    """The test host's repository password, kept on the control machine (generated once)."""
    path = TESTHOST.state_dir / "backup-password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


if _target != "production" and not _SETTINGS.get("KCA_BACKUP_PASSWORD"):
    _SETTINGS["KCA_BACKUP_PASSWORD"] = os.environ["KCA_BACKUP_PASSWORD"] = _testhost_backup_password()
# The deploy reads the password from the environment; the data says only whether there is one, so the
# check before the first operation can name where to put it (the value never enters pyinfra's data).
_BACKUP_PASSWORD_GIVEN = bool(_SETTINGS.get("KCA_BACKUP_PASSWORD"))

if _target == "production":
    _prod = {
        "backup_password_given": _BACKUP_PASSWORD_GIVEN,
        "ssh_user": _SETTINGS.get("KCA_PRODUCTION_USER", "root"),
        "ssh_port": int(_SETTINGS.get("KCA_PRODUCTION_PORT", "22")),
    }
    if _SETTINGS.get("KCA_PRODUCTION_KEY"):
        _prod["ssh_key"] = _SETTINGS["KCA_PRODUCTION_KEY"]
    if _prod["ssh_user"] != "root":
        _prod["_sudo"] = True
    production.append((_SETTINGS["KCA_PRODUCTION_HOST"], _prod))
else:
    testhost.append(
        (
            contract.INVENTORY_NAME,
            {
                "backup_password_given": _BACKUP_PASSWORD_GIVEN,
                "ssh_hostname": TESTHOST.guest_address,
                "ssh_user": "root",
                "ssh_key": str(TESTHOST.ssh_key),
                # The test host is rebuilt on every boot: its host key is new each time.
                "ssh_strict_host_key_checking": "no",
                "ssh_known_hosts_file": "/dev/null",
            },
        )
    )


def target() -> tuple[str, str, str]:
    """(group, SSH user, address) of the selected target."""
    if production:
        address, data = production[0]
        return "production", data["ssh_user"], address
    return "testhost", "root", TESTHOST.guest_address


if __name__ == "__main__":
    print(target()[0])
