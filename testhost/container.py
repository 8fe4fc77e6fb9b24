"""The container backend: systemd-nspawn boots the root filesystem with systemd as the guest's PID 1, in
its own network namespace behind a veth pair. It needs no systemd and no machined on the host, and
Docker runs inside it. Fast (boot in about a second), but it shares this machine's kernel and has no
block devices of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from . import contract, guest, image
from .contract import Instance
from .util import TesthostError, log, pid_alive, read_pid, wait_until

HOST_PACKAGES = ("debootstrap", "systemd-container", "nftables", "iptables", "zstd", "openssh-client")
STOP_WAIT_S = 30


def nspawn_args(
    instance: Instance, rootfs: Path, guest_cache: Path, shares: list[str], tarball: Path | None = None
) -> list[str]:
    own_tarball = [f"--bind-ro={tarball}:{contract.GUEST_ROOTFS_TARBALL}"] if tarball else []
    return [
        "systemd-nspawn",
        # No machined/systemd on the host to register with.
        "--boot", "--register=no", "--keep-unit",
        "-M", instance.machine, "-D", str(rootfs),
        "--network-veth", "--resolv-conf=off", "--console=passive",
        # What dockerd/runc inside the guest need (runc fails without them): the session keyring, bpf for
        # cgroup v2 device rules, and all capabilities.
        "--system-call-filter=@keyring", "--system-call-filter=bpf", "--capability=all",
        f"--bind={guest_cache}/pip:/root/.cache/pip",
        f"--bind={image.apt_archives(guest_cache, instance)}:/var/cache/apt/archives",
        f"--bind={guest_cache}/ccache:/var/cache/ccache",
        f"--bind={guest_cache}/images:{contract.GUEST_IMAGE_CACHE}",
        f"--bind={instance.state_dir}/backup-repository:{contract.GUEST_BACKUP_REPOSITORY}",
        *own_tarball,
        *(f"--bind-ro={share}" for share in shares),
    ]  # fmt: skip


class Container:
    name = "container"
    host_packages = HOST_PACKAGES
    ssh_wait_s = guest.SSH_WAIT_S

    def __init__(self, instance: Instance, cache_dir: Path):
        self.instance = instance
        self.guest_cache = cache_dir / "guest"
        self.rootfs = instance.state_dir / "rootfs"
        self.pid_file = instance.state_dir / "nspawn.pid"
        self.console_log = instance.state_dir / "nspawn.log"
        self.shares_file = instance.state_dir / "shares"
        # The tarball the rootfs came from, bound into the guest as the base of its local images.
        self.tarball_file = instance.state_dir / "tarball"
        # nspawn names the host end of the veth after the machine (at most 15 characters).
        self.link = instance.container_link

    # ---- processes ---------------------------------------------------------------------------------

    def pid(self) -> int | None:
        """Our systemd-nspawn: from the pid file, else found in /proc by its root directory."""
        pid = read_pid(self.pid_file)
        if pid_alive(pid) and _comm(pid) == "systemd-nspawn":
            return pid
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and _comm(int(proc.name)) == "systemd-nspawn":
                try:
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if str(self.rootfs).encode() in argv and pid_alive(int(proc.name)):
                    return int(proc.name)
        return None

    def guest_inits(self) -> list[int]:
        """PID 1 of every container booted from our rootfs. Normally nspawn's one child, but a SIGKILLed
        nspawn leaves its guest running on, orphaned: this finds that one too. (/proc/PID/root reads "/"
        across mount namespaces, so the guest's own mountinfo is used: the source of its "/" mount is our
        rootfs, relative to the filesystem that holds it.)"""
        inits = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or proc.name == "1":
                continue
            try:
                status = (proc / "status").read_text()
                nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
                if nspid[-1:] != ["1"] or len(nspid) < 2 or not pid_alive(int(proc.name)):
                    continue
                if b"container=systemd-nspawn" not in (proc / "environ").read_bytes().split(b"\0"):
                    continue
                root_source = next(
                    (
                        f[3]
                        for f in (line.split() for line in (proc / "mountinfo").read_text().splitlines())
                        if f[4] == "/"
                    ),
                    "",
                )
            except (OSError, StopIteration, IndexError):
                continue
            root_source = root_source.removesuffix("//deleted")
            if len(root_source) > 1 and str(self.rootfs).endswith(root_source):
                inits.append(int(proc.name))
        return inits

    def running(self) -> bool:
        return self.pid() is not None

    def describe(self) -> str:
        return f"nspawn pid {self.pid()}"

    def boot_note(self) -> str:
        return ""

    def leftovers(self) -> bool:
        return (
            self.pid_file.exists()
            or self.rootfs.exists()
            or bool(self.guest_inits())
            or guest.link_exists(self.link)
            or guest.nft_table_present(self.instance)
        )

    def orphan_note(self) -> str | None:
        if self.guest_inits():
            return "nspawn gone but its guest still runs; 'testhost down' removes it"
        return None

    # ---- up ----------------------------------------------------------------------------------------

    def prepare(self, tarball: Path) -> None:
        shares = image.prepare_rootfs(self.rootfs, tarball, self.instance, network_match="Name=host0")
        self.shares_file.write_text("".join(f"{s}\n" for s in shares))
        self.tarball_file.write_text(f"{tarball}\n")
        if shares:
            log(f"pip paths shared read-only: {' '.join(shares)}")
        for cache in ("pip", "apt-archives", "ccache", "images"):
            (self.guest_cache / cache).mkdir(parents=True, exist_ok=True)
        (self.instance.state_dir / "backup-repository").mkdir(mode=0o700, parents=True, exist_ok=True)

    def boot(self) -> None:
        """Start nspawn on the prepared rootfs and set up the host end of the veth."""
        shares = self.shares_file.read_text().split() if self.shares_file.exists() else []
        tarball = Path(self.tarball_file.read_text().strip()) if self.tarball_file.exists() else None
        args = nspawn_args(self.instance, self.rootfs, self.guest_cache, shares, tarball)
        with open(os.devnull) as stdin, self.console_log.open("ab") as out:
            # A new session: the guest outlives this command and its terminal. close_fds (the default)
            # keeps the state lock out of the guest, which would otherwise hold it forever.
            process = subprocess.Popen(
                args, stdin=stdin, stdout=out, stderr=out, start_new_session=True,
                env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            )  # fmt: skip
        self.pid_file.write_text(f"{process.pid}\n")
        # nspawn creates the host end of the veth a moment after it starts.
        if not wait_until(lambda: guest.link_exists(self.link) or process.poll() is not None, 15, 0.1) or (
            process.poll() is not None
        ):
            raise TesthostError(f"host end of the veth ({self.link}) never appeared")
        guest.configure_host_link(self.instance, self.link)
        self.process = process

    def still_booting(self) -> None:
        if not pid_alive(read_pid(self.pid_file)):
            raise TesthostError("systemd-nspawn exited during boot")

    # ---- reboot ------------------------------------------------------------------------------------

    def reboot(self) -> None:
        """A reboot as on a real machine: the guest shuts down, nspawn exits with 133, and the same root
        filesystem boots again (nothing is unpacked again)."""
        pid = self.pid()
        if pid is None:
            raise TesthostError("the guest is not running")
        guest.ask(self.instance, "systemctl reboot")
        if not wait_until(lambda: not pid_alive(pid), STOP_WAIT_S, 0.1):
            raise TesthostError(f"the guest did not shut down within {STOP_WAIT_S} s of 'systemctl reboot'")
        # nspawn removes the veth when it exits; the new one gets the same address.
        self.boot()

    # ---- down --------------------------------------------------------------------------------------

    def stop(self) -> None:
        pid = self.pid()
        inits = self.guest_inits()
        if pid is None and not inits:
            return
        log(f"stopping guest (nspawn {pid or 'gone'}, guest init {' '.join(map(str, inits)) or 'none'})")
        # SIGRTMIN+4 asks the guest's systemd for a clean poweroff; nspawn exits when it is done.
        for target, sig in [(p, signal.SIGRTMIN + 4) for p in inits] or [(pid, signal.SIGTERM)]:
            _kill(target, sig)
        everyone = [p for p in [pid, *inits] if p]
        if wait_until(lambda: not any(map(pid_alive, everyone)), STOP_WAIT_S, 0.1):
            return
        log(f"guest did not stop within {STOP_WAIT_S} s; killing it")
        for target in everyone:
            _kill(target, signal.SIGKILL)
        if not wait_until(lambda: not any(map(pid_alive, everyone)), 5, 0.1):
            raise TesthostError(f"guest processes ({everyone}) survived SIGKILL; not removing {self.rootfs}")

    def remove(self) -> None:
        guest.teardown_host_network(self.instance, self.link)
        self.pid_file.unlink(missing_ok=True)
        self.shares_file.unlink(missing_ok=True)
        # nspawn's bind mounts lived in its own mount namespace; on the host these are plain folders.
        image.remove_tree(self.rootfs)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill(pid: int | None, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.1f}"
