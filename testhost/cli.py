"""testhost: a disposable Debian 12 test host for the deploy and its tests.

  testhost build [--force]          build (or reuse) the cached root filesystem tarball (and VM image)
  testhost up [--check-net]         start the guest (or reuse a running one), wait until it is ready
  testhost reboot                   reboot the guest; its root filesystem stays, as on a real machine
  testhost down                     stop the guest and remove its disks (keeps key and caches)
  testhost status                   print running/stopped (exit 0/3)
  testhost ssh [CMD...]             run a shell or CMD in the guest
  testhost selftest                 check the running guest: systemd state, apt and pip indexes reachable

Backends (--backend, or KCA_TESTHOST_BACKEND):
  container (default)  systemd-nspawn: boots in a second; shares this machine's kernel, no block devices
  vm                   QEMU with a Debian kernel: its own kernel, boot, and a second disk for /models
                       (`up --models-disk empty|none|PATH`); KVM when it works, TCG otherwise

Environment: KCA_TESTHOST_INSTANCE (several hosts side by side; see testhost/contract.py),
KCA_CACHE_DIR (tarballs and guest caches), KCA_STATE_DIR (disks, ssh key, pid, logs).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path

from . import contract, guest, image
from .container import Container
from .util import TesthostError, ensure_host_packages, log

BACKENDS = ("container", "vm")
LOCK_WAIT_S = 900


def make_backend(name: str, instance: contract.Instance, cache_dir: Path):
    if name == "vm":
        from .vm import VirtualMachine

        return VirtualMachine(instance, cache_dir)
    return Container(instance, cache_dir)


class Testhost:
    def __init__(self, instance: contract.Instance, cache_dir: Path, backend_name: str | None):
        self.instance = instance
        self.cache_dir = cache_dir
        self.backend_file = instance.state_dir / "backend"
        recorded = self.backend_file.read_text().strip() if self.backend_file.exists() else None
        # The backend a guest was started with is the one that stops it, whatever is asked now.
        self.recorded = recorded if recorded in BACKENDS else None
        self.requested = backend_name or os.environ.get("KCA_TESTHOST_BACKEND") or self.recorded or "container"
        if self.requested not in BACKENDS:
            raise TesthostError(f"unknown backend {self.requested!r}: expected one of {', '.join(BACKENDS)}")

    def backend(self, name: str | None = None):
        return make_backend(name or self.recorded or self.requested, self.instance, self.cache_dir)

    # ---- commands ----------------------------------------------------------------------------------

    def build(self, force: bool) -> None:
        backend = make_backend(self.requested, self.instance, self.cache_dir)
        ensure_host_packages(backend.host_packages, self.instance.state_dir)
        tarball = image.RootfsCache(self.cache_dir).build(force)
        if hasattr(backend, "build_image"):
            backend.build_image(tarball, force)

    def up(self, check_net: bool, models_disk: str | None, extra_disks: dict[str, str]) -> None:
        started = time.monotonic()
        running = self.backend()
        if running.running():
            asked_disks = models_disk is not None or extra_disks
            if running.name == self.requested and guest.answers(self.instance) and not asked_disks:
                print(f"reused ({running.describe()}, {self.instance.guest_address}) in {_since(started)} s")
                if check_net:
                    guest.selftest(self.instance)
                return
            log(f"a {running.name} guest is running; replacing it")
            self.stop_and_remove(running)
        elif running.leftovers():
            log("cleaning stale state of a previous guest")
            self.stop_and_remove(running)

        backend = make_backend(self.requested, self.instance, self.cache_dir)
        ensure_host_packages(backend.host_packages, self.instance.state_dir)
        tarball = image.RootfsCache(self.cache_dir).build()
        guest.ensure_client_key(self.instance)
        log(f"preparing the {backend.name} guest from {tarball.name}")
        self.backend_file.write_text(f"{backend.name}\n")
        try:
            if backend.name == "vm":
                backend.prepare(tarball, models_disk or "empty", extra_disks)
            else:
                if models_disk is not None or extra_disks:
                    raise TesthostError("--models-disk needs the vm backend: a container has no block devices")
                backend.prepare(tarball)
            log(f"guest ready to boot after {_since(started)} s; booting")
            booted = time.monotonic()
            backend.boot()
            guest.wait_for_ssh(self.instance, backend.still_booting, backend.ssh_wait_s)
            state = guest.wait_until_running(self.instance)
        except TesthostError as error:
            self.start_failed(backend, error)
        print(
            f"up: {backend.name} guest {self.instance.machine} at {self.instance.guest_address} is {state}; "
            f"booted in {_since(booted)} s{backend.boot_note()}, up took {_since(started)} s"
        )
        print(f"ssh: ssh -F {self.instance.ssh_config} {self.instance.machine}")
        if check_net:
            guest.selftest(self.instance)

    def reboot(self, models_disk: str | None, detach: tuple[str, ...] = (), cold: bool = False) -> None:
        backend = self.backend()
        if not backend.running():
            raise TesthostError("the guest is not running; run 'testhost up'")
        if (models_disk is not None or detach or cold) and backend.name != "vm":
            raise TesthostError("--models-disk, --detach and --cold need the vm backend: a container has no disks")
        before = guest.boot_id(self.instance)
        started = time.monotonic()
        log(f"rebooting the {backend.name} guest")
        try:
            if backend.name == "vm":
                backend.reboot(models_disk, detach, cold)
            else:
                backend.reboot()
            guest.wait_for_new_boot(self.instance, before, backend.still_booting, backend.ssh_wait_s)
            reachable = _since(started)
            state = guest.wait_until_running(self.instance)
        except TesthostError as error:
            self.start_failed(backend, error)
        print(f"rebooted: {backend.name} guest is {state}; SSH after {reachable} s, {state} after {_since(started)} s")

    def down(self) -> None:
        started = time.monotonic()
        backend = self.backend()
        if not backend.running() and not backend.leftovers():
            print("already stopped")
            return
        self.stop_and_remove(backend)
        print(f"stopped in {_since(started)} s")

    def stop_and_remove(self, backend) -> None:
        backend.stop()
        backend.remove()
        self.backend_file.unlink(missing_ok=True)
        self.recorded = None

    def status(self) -> int:
        backend = self.backend()
        if backend.running():
            if guest.answers(self.instance):
                print(
                    f"running ({backend.name}, {backend.describe()}, {self.instance.guest_address}, "
                    f"ssh -F {self.instance.ssh_config} {self.instance.machine})"
                )
            else:
                print(f"running ({backend.name}, {backend.describe()}) but SSH does not answer")
            return 0
        note = backend.orphan_note()
        print(f"stopped ({note})" if note else "stopped")
        return 3

    def ssh(self, command: list[str]) -> None:
        if not self.instance.ssh_config.is_file():
            raise TesthostError(f"no {self.instance.ssh_config}; run 'testhost up' first")
        os.execvp("ssh", ["ssh", "-F", str(self.instance.ssh_config), self.instance.machine, *command])

    def start_failed(self, backend, error: TesthostError):
        log(f"start failed: {error}")
        console = backend.console_log
        if console.exists() and console.stat().st_size:
            lines = console.read_text(errors="replace").splitlines()[-40:]
            print(f"---- last lines of {console} ----", *lines, "----", sep="\n", file=sys.stderr)
        raise TesthostError("up failed; run 'testhost down' to clean up")


def _since(started: float) -> str:
    return f"{time.monotonic() - started:.1f}"


def take_lock(state_dir: Path):
    """Serialise build/up/down/reboot of one instance: two at once would fight over its disks and link."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = (state_dir / "lock").open("w")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TesthostError(f"another testhost command holds {state_dir}/lock") from None
            time.sleep(0.5)


def parse_disks(specs: list[str]) -> dict[str, str]:
    """["SERIAL=PATH", ...] -> {serial: path}; a virtio serial is at most 20 characters."""
    disks = {}
    for spec in specs:
        serial, sep, path = spec.partition("=")
        if not sep or not serial or not path or len(serial) > 20:
            raise TesthostError(f"--disk {spec}: expected SERIAL=PATH with a serial of 1-20 characters")
        if not Path(path).is_file():
            raise TesthostError(f"--disk {spec}: no such image file")
        disks[serial] = path
    return disks


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="testhost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=BACKENDS, help="default: KCA_TESTHOST_BACKEND, the running guest's, container")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = sub.add_parser("build", help="build (or reuse) the cached root filesystem tarball")
    build.add_argument("--force", action="store_true", help="build even when a tarball for this recipe exists")
    up = sub.add_parser("up", help="start the guest (or reuse a running one)")
    up.add_argument("--check-net", action="store_true", help="run the selftest once the guest is up")
    up.add_argument(
        "--disk", action="append", default=[], metavar="SERIAL=PATH",
        help="vm only: attach a raw image as /dev/disk/by-id/virtio-SERIAL (repeatable)",
    )  # fmt: skip
    up.add_argument(
        "--models-disk", metavar="empty|none|PATH",
        help="vm only: the /models disk: a new empty one (default), none, or a raw image file (used in place)",
    )  # fmt: skip
    reboot = sub.add_parser("reboot", help="reboot the guest, keeping its root filesystem")
    reboot.add_argument(
        "--models-disk", metavar="none|PATH", help="vm only: power off and boot again with this /models disk instead"
    )
    reboot.add_argument(
        "--detach", metavar="SERIAL", action="append", default=[],
        help="vm only: power off and boot once without the extra disk of this serial (repeatable), as a dead disk",
    )  # fmt: skip
    reboot.add_argument("--cold", action="store_true", help="vm only: power off and on, every recorded disk attached")
    sub.add_parser("down", help="stop the guest and remove its disks")
    sub.add_parser("status", help="print running/stopped (exit 0/3)")
    ssh = sub.add_parser("ssh", help="run a shell or CMD in the guest")
    ssh.add_argument("remote", nargs=argparse.REMAINDER)
    sub.add_parser("selftest", help="check the running guest")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        instance = contract.instance()
        cache_dir = Path(os.environ.get("KCA_CACHE_DIR") or "/var/cache/kca-ai-infra")
        host = Testhost(instance, cache_dir, args.backend)
        if args.command in ("status", "ssh"):
            return host.status() if args.command == "status" else host.ssh(args.remote) or 0
        if os.geteuid() != 0:
            raise TesthostError("must run as root (debootstrap, nspawn or QEMU, links and nft need it)")
        if args.command == "selftest":
            guest.selftest(instance)
            return 0
        lock = take_lock(instance.state_dir)  # noqa: F841 (held until exit)
        if args.command == "build":
            host.build(args.force)
        elif args.command == "up":
            host.up(args.check_net, args.models_disk, parse_disks(args.disk))
        elif args.command == "reboot":
            host.reboot(args.models_disk, tuple(args.detach), args.cold)
        elif args.command == "down":
            host.down()
        return 0
    except TesthostError as error:
        print(f"[{time.strftime('%H:%M:%S')}] testhost: error: {error}", file=sys.stderr)
        return 1
