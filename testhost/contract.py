"""The test host's contract with everything that reaches it: its name, addresses, state directory and
SSH key. `testhost` writes them; the inventory, the tests and the tools read them from here.

Several test hosts can run side by side on one machine, each an *instance* chosen by
KCA_TESTHOST_INSTANCE (default 0). Instance N has its own name, subnet 10.213.(7+N).0/24, state
directory, nft table and host-side link, so one never disturbs another. Instance 0 keeps the
historical values (kcatest, 10.213.7.2, /var/lib/kca-testhost, table kca_testhost).

Only the standard library is used: this module is imported by the inventory and by the test host's
own command, which runs before any virtual environment exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FIRST_SUBNET_OCTET = 7  # instance 0 is 10.213.7.0/24
MAX_INSTANCE = 99
PREFIX_LENGTH = 24
INVENTORY_NAME = "kca-testhost"  # the host's name in inventory.py (and so in pyinfra's output)

# Paths inside the guest that group_data/testhost.py names (tests/unit/test_testhost.py keeps them in step):
# the guest's own root filesystem tarball, the base of the images built where none can be pulled
# (docker.local_images.base_rootfs); those images' cache (docker.local_images.cache_dir), kept on this
# machine; and the backup repository (backup.repository), kept on this machine too, off the guest's disk.
GUEST_ROOTFS_TARBALL = "/var/lib/kca-testhost/rootfs.tar.zst"
GUEST_IMAGE_CACHE = "/var/cache/kca-images"
GUEST_BACKUP_REPOSITORY = "/srv/kca-backup-repository"


@dataclass(frozen=True)
class Instance:
    number: int
    state_dir: Path

    @property
    def machine(self) -> str:
        """The guest's hostname and the SSH alias (the host-side link names derive from it: <= 12 chars)."""
        return "kcatest" if self.number == 0 else f"kcatest{self.number}"

    @property
    def subnet(self) -> str:
        return f"10.213.{FIRST_SUBNET_OCTET + self.number}.0/{PREFIX_LENGTH}"

    @property
    def host_address(self) -> str:
        return f"10.213.{FIRST_SUBNET_OCTET + self.number}.1"

    @property
    def guest_address(self) -> str:
        return f"10.213.{FIRST_SUBNET_OCTET + self.number}.2"

    @property
    def container_link(self) -> str:
        """The host end of the container's veth (systemd-nspawn names it ve-<machine>)."""
        return f"ve-{self.machine}"

    @property
    def vm_link(self) -> str:
        """The VM's tap device on this machine."""
        return f"tap-{self.machine}"

    @property
    def nft_table(self) -> str:
        """The host's masquerade table for the guest subnet."""
        return "kca_testhost" if self.number == 0 else f"kca_testhost_{self.number}"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh" / "config"


def instance(environ: dict[str, str] | None = None) -> Instance:
    """The instance selected by the environment (KCA_TESTHOST_INSTANCE, KCA_STATE_DIR)."""
    environ = os.environ if environ is None else environ
    raw = environ.get("KCA_TESTHOST_INSTANCE", "0") or "0"
    if not raw.isdigit() or int(raw) > MAX_INSTANCE:
        raise ValueError(f"KCA_TESTHOST_INSTANCE={raw!r}: expected a number from 0 to {MAX_INSTANCE}")
    number = int(raw)
    default_state = "/var/lib/kca-testhost" if number == 0 else f"/var/lib/kca-testhost-{number}"
    return Instance(number=number, state_dir=Path(environ.get("KCA_STATE_DIR") or default_state))
