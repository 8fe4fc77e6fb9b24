"""The VM backend: QEMU boots the same root filesystem, plus a Debian kernel, as a virtual machine with
its own kernel, its own boot and real block devices: a root disk and a second disk that stands in for
the /models partition. Same name, address, key and inventory entry as the container.

Acceleration: KVM when /dev/kvm boots a Linux guest, TCG (emulation, several times slower) otherwise;
`up` prints which. The guest's link is a tap device on this machine, so the guest has the same address
as the container and the firewall is probed from outside exactly as on the container.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from . import guest, image
from .contract import Instance
from .util import TesthostError, log, pid_alive, read_pid, run, wait_until

# fdisk: sfdisk makes the partitioned disk image of the /models tests.
HOST_PACKAGES = ("debootstrap", "nftables", "iptables", "zstd", "openssh-client", "systemd-container",
                 "qemu-system-x86", "e2fsprogs", "fdisk")  # fmt: skip
KERNEL_PACKAGES = ("linux-image-amd64", "initramfs-tools")
ROOT_DISK_SIZE = "8G"  # sparse: only what the guest writes takes room
MODELS_DISK_SIZE = "4G"
MEMORY_MB = 3072
CPUS = 2
KVM_PROBE_S = 20
STOP_WAIT_S = 60
# The /models disk's serial: the guest sees it as /dev/disk/by-id/virtio-<serial>, a stable name as the
# real server's /dev/disk/by-id/nvme-... is.
MODELS_DISK_SERIAL = "kca-models"
MODELS_DEVICE = f"/dev/disk/by-id/virtio-{MODELS_DISK_SERIAL}"
NINEP = "trans=virtio,version=9p2000.L,msize=262144,nofail"


def build_vm_rootfs(root: Path, apt_archives: Path, build_log: Path) -> None:
    """The container's root filesystem plus a Debian kernel and its initramfs (virtio drivers included)."""
    image.install_apt_config(root)
    shutil.copy(Path("/etc/resolv.conf").resolve(), root / "etc/resolv.conf")
    # nspawn without --boot: /proc, /sys and /dev for the kernel's postinst, the host's network for apt.
    nspawn = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--resolv-conf=off", "-D", str(root),
              f"--bind={apt_archives}:/var/cache/apt/archives"]  # fmt: skip
    with build_log.open("ab") as out:
        run([*nspawn, "apt-get", "update", "-q"], stdout=out)
        run([*nspawn, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
             "--no-install-recommends", *KERNEL_PACKAGES], stdout=out)  # fmt: skip
    shutil.rmtree(root / "var/lib/apt/lists")
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    # A serial console for the boot log (console.log in the state directory).
    run(["chroot", root, "systemctl", "enable", "serial-getty@ttyS0.service"], stdout=subprocess.DEVNULL)


def vm_key() -> str:
    return image.cache_key(image.rootfs_key(), inspect.getsource(build_vm_rootfs), *KERNEL_PACKAGES)


def kvm_verdict_file(image_dir: Path) -> Path:
    """Where the KVM probe's verdict is kept: per QEMU version and host kernel."""
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return image_dir / f"kvm-probe-{image.cache_key(qemu, os.uname().release)}"


def expected_accel(cache_dir: Path) -> tuple[str, str]:
    """The acceleration the next boot will use, without booting: ("kvm" | "tcg" | "unknown", why)."""
    forced = os.environ.get("KCA_TESTHOST_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, "KCA_TESTHOST_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    verdict = kvm_verdict_file(cache_dir / "vm")
    if not verdict.exists():
        return "unknown", "/dev/kvm not probed yet (the first VM boot probes it)"
    text = verdict.read_text().strip()
    if text == "kvm":
        return "kvm", "/dev/kvm boots the kernel"
    return "tcg", f"/dev/kvm does not boot a Linux guest ({text})"


def mac_address(instance: Instance) -> str:
    return f"52:54:00:6b:ca:{instance.number:02x}"


def qemu_args(
    instance: Instance,
    accel: str,
    state: Path,
    link: str,
    models_disk: Path | None,
    shares: dict[str, tuple[str, bool]],
    extra_disks: dict[str, str] | None = None,
) -> list[str]:
    """The QEMU command line. `shares`: 9p tag -> (host folder, read-only); `extra_disks`: serial -> raw
    image, each seen in the guest as /dev/disk/by-id/virtio-<serial>."""
    args = [
        "qemu-system-x86_64",
        "-name", instance.machine,
        "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", f"q35,accel={accel}",
        "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(CPUS), "-m", str(MEMORY_MB),
        "-kernel", str(state / "vmlinuz"), "-initrd", str(state / "initrd.img"),
        "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=1",
        "-drive", f"file={state / 'root.img'},if=none,id=root,format=raw,cache=unsafe",
        "-device", "virtio-blk-pci,drive=root,serial=kca-root",
        "-netdev", f"tap,id=net0,ifname={link},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,mac={mac_address(instance)}",
        "-serial", f"file:{state / 'console.log'}",
        "-qmp", f"unix:{state / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(state / "qemu.pid"),
    ]  # fmt: skip
    if models_disk is not None:
        args += [
            "-drive", f"file={models_disk},if=none,id=models,format=raw",
            "-device", f"virtio-blk-pci,drive=models,serial={MODELS_DISK_SERIAL}",
        ]  # fmt: skip
    for number, (serial, path) in enumerate((extra_disks or {}).items()):
        args += [
            "-drive", f"file={path},if=none,id=disk{number},format=raw",
            "-device", f"virtio-blk-pci,drive=disk{number},serial={serial}",
        ]  # fmt: skip
    for tag, (folder, read_only) in shares.items():
        args += [
            "-virtfs",
            f"local,path={folder},mount_tag={tag},security_model=none" + (",readonly=on" if read_only else ""),
        ]
    return args


def guest_fstab(shares: dict[str, tuple[str, str, bool]]) -> str:
    """The guest's fstab: its root disk, and each 9p share (tag -> host folder, guest path, read-only)."""
    lines = ["# written by testhost", "/dev/vda / ext4 rw,errors=remount-ro 0 1"]
    for tag, (_, path, read_only) in shares.items():
        lines.append(f"{tag} {path} 9p {NINEP}{',ro' if read_only else ''} 0 0")
    return "\n".join(lines) + "\n"


class VirtualMachine:
    name = "vm"
    host_packages = HOST_PACKAGES
    ssh_wait_s = 300  # under TCG the kernel and systemd take 20-60 s to reach sshd

    def __init__(self, instance: Instance, cache_dir: Path):
        self.instance = instance
        self.cache_dir = cache_dir
        self.image_dir = cache_dir / "vm"
        self.guest_cache = cache_dir / "guest"
        self.state = instance.state_dir
        self.pid_file = self.state / "qemu.pid"
        self.console_log = self.state / "console.log"
        self.args_file = self.state / "qemu.json"
        # The tap device on this machine's side (at most 15 characters).
        self.link = instance.vm_link

    # ---- image -------------------------------------------------------------------------------------

    @property
    def tarball(self) -> Path:
        return self.image_dir / f"debian12-vm-{vm_key()}.tar.zst"

    def build_image(self, rootfs_tarball: Path, force: bool = False) -> Path:
        tarball = self.tarball
        if tarball.is_file() and not force:
            log(f"VM image up to date: {tarball}")
            return tarball
        self.image_dir.mkdir(parents=True, exist_ok=True)
        (self.guest_cache / "apt-archives").mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        build_log = self.image_dir / f"{tarball.name.removesuffix('.tar.zst')}.log"
        build_log.write_text("")
        with tempfile.TemporaryDirectory(dir=self.image_dir, prefix=".build.") as work:
            root = Path(work)
            image.unpack(rootfs_tarball, root)
            log(f"installing {' '.join(KERNEL_PACKAGES)} into the VM image (log: {build_log})")
            try:
                build_vm_rootfs(root, self.guest_cache / "apt-archives", build_log)
            except TesthostError as error:
                raise TesthostError(f"building the VM image failed: {error}\n{image.tail(build_log, 30)}") from None
            image.pack(root, tarball)
            image.remove_tree(root)
        image.prune(self.image_dir, "debian12-vm-*.tar.zst", keep=tarball)
        log(f"built {tarball} ({tarball.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - started:.1f} s")
        return tarball

    # ---- acceleration ------------------------------------------------------------------------------

    def accel(self) -> tuple[str, str]:
        """("kvm" | "tcg", why). KCA_TESTHOST_ACCEL forces one. A /dev/kvm that opens is not enough (a
        paravirtual one may not run a Linux guest): the kernel is booted once under KVM to see that it
        starts, and the verdict is kept per QEMU version and host kernel."""
        accel, why = expected_accel(self.cache_dir)
        if accel == "unknown":
            kvm_verdict_file(self.image_dir).write_text(self.probe_kvm())
            accel, why = expected_accel(self.cache_dir)
        return accel, why

    def probe_kvm(self) -> str:
        log(f"probing KVM: booting the guest kernel under it for up to {KVM_PROBE_S} s")
        with tempfile.TemporaryDirectory() as tmp:
            console = Path(tmp) / "console"
            args = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                    "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "512",
                    "-kernel", str(self.state / "vmlinuz"), "-initrd", str(self.state / "initrd.img"),
                    "-append", "console=ttyS0 panic=-1 rdinit=/bin/true", "-serial", f"file:{console}"]  # fmt: skip
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            booted = wait_until(lambda: "Freeing unused kernel" in _read(console), KVM_PROBE_S, 0.2)
            if process.poll() is None:
                process.kill()
            process.wait()
            if booted:
                return "kvm"
            error = process.stderr.read().decode(errors="replace").strip().splitlines()
            return error[-1] if error else f"no kernel output in {KVM_PROBE_S} s"

    # ---- processes ---------------------------------------------------------------------------------

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        if pid_alive(pid) and _comm(pid).startswith("qemu-system"):
            return pid
        return None

    def running(self) -> bool:
        return self.pid() is not None

    def describe(self) -> str:
        accel = json.loads(self.args_file.read_text())["accel"] if self.args_file.exists() else "?"
        return f"qemu pid {self.pid()}, {accel}"

    def boot_note(self) -> str:
        return f" under {self._accel.upper()} ({self._accel_why})"

    def leftovers(self) -> bool:
        return (
            self.pid_file.exists()
            or (self.state / "root.img").exists()
            or guest.link_exists(self.link)
            or guest.nft_table_present(self.instance)
        )

    def orphan_note(self) -> str | None:
        return None

    def still_booting(self) -> None:
        if not self.running():
            raise TesthostError("QEMU exited during boot")

    # ---- up ----------------------------------------------------------------------------------------

    def prepare(self, rootfs_tarball: Path, models_disk: str, extra_disks: dict[str, str] | None = None) -> None:
        """The root disk (the VM image made this instance's machine), the kernel, and the /models disk."""
        tarball = self.build_image(rootfs_tarball)
        root = self.state / "rootfs-vm"
        pip_shares = image.prepare_rootfs(root, tarball, self.instance, f"MACAddress={mac_address(self.instance)}")
        for cache in ("pip", "apt-archives", "ccache"):
            (self.guest_cache / cache).mkdir(parents=True, exist_ok=True)
        # 9p shares: the guest caches (read-write), and the folders the guest's pip.conf names (read-only),
        # at the same paths as in the container.
        archives = image.apt_archives(self.guest_cache, self.instance)
        shares = {
            "pip-cache": (str(self.guest_cache / "pip"), "/root/.cache/pip", False),
            "apt-archives": (str(archives), "/var/cache/apt/archives", False),
            "ccache": (str(self.guest_cache / "ccache"), "/var/cache/ccache", False),
        }
        for number, folder in enumerate(pip_shares):
            shares[f"pip-share-{number}"] = (folder, folder, True)
            (root / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / "etc/fstab").write_text(guest_fstab(shares))
        # QEMU boots the image's kernel directly (no boot loader on the root disk).
        for name in ("vmlinuz", "initrd.img"):
            found = sorted((root / "boot").glob(f"{name}-*"))
            if not found:
                raise TesthostError(f"the VM image has no /boot/{name}-*; rebuild it with 'testhost build --force'")
            shutil.copy(found[-1], self.state / name)

        disk = self.state / "root.img"
        disk.unlink(missing_ok=True)
        started = time.monotonic()
        run(
            ["mke2fs", "-q", "-t", "ext4", "-L", "kca-root", "-d", root, disk, ROOT_DISK_SIZE],
            stdout=subprocess.DEVNULL,
        )
        log(f"root disk written in {time.monotonic() - started:.1f} s ({disk}, {ROOT_DISK_SIZE} sparse)")
        image.remove_tree(root)

        models = self.models_disk_path(models_disk)
        self._accel, self._accel_why = self.accel()
        self.args_file.write_text(
            json.dumps(
                {
                    "accel": self._accel,
                    "accel_why": self._accel_why,
                    "models_disk": str(models) if models else None,
                    "extra_disks": {serial: str(Path(path).resolve()) for serial, path in (extra_disks or {}).items()},
                    "shares": {tag: (host, ro) for tag, (host, _, ro) in shares.items()},
                }
            )  # fmt: skip
        )

    def models_disk_path(self, models_disk: str) -> Path | None:
        if models_disk == "none":
            return None
        if models_disk == "empty":
            path = self.state / "models.img"
            path.unlink(missing_ok=True)
            run(["truncate", "-s", MODELS_DISK_SIZE, path])
            return path
        path = Path(models_disk).resolve()
        if not path.is_file():
            raise TesthostError(f"--models-disk {models_disk}: no such image file")
        return path

    def boot(self, models_disk: str | None = None, detach: tuple[str, ...] = ()) -> None:
        """Start QEMU on the prepared disks. `models_disk` (none or PATH) replaces the recorded one;
        the extra disks whose serials are in `detach` stay out of this boot (the record keeps them)."""
        unknown = set(detach) - set(json.loads(self.args_file.read_text())["extra_disks"])
        if unknown:
            raise TesthostError(f"no extra disk with serial {', '.join(sorted(unknown))} is attached to this VM")
        saved = json.loads(self.args_file.read_text())
        self._accel, self._accel_why = saved["accel"], saved["accel_why"]
        if models_disk is not None:
            saved["models_disk"] = str(self.models_disk_path(models_disk)) if models_disk != "none" else None
            self.args_file.write_text(json.dumps(saved))
        models = Path(saved["models_disk"]) if saved["models_disk"] else None
        shares = {tag: (host, ro) for tag, (host, ro) in saved["shares"].items()}
        if not guest.link_exists(self.link):
            run(["ip", "tuntap", "add", "dev", self.link, "mode", "tap"])
        guest.configure_host_link(self.instance, self.link)
        (self.state / "qmp.sock").unlink(missing_ok=True)
        self.console_log.write_text("")
        attached = {serial: path for serial, path in saved["extra_disks"].items() if serial not in detach}
        args = qemu_args(self.instance, self._accel, self.state, self.link, models, shares, attached)
        with open(os.devnull) as stdin, (self.state / "qemu.log").open("ab") as out:
            # A new session: the VM outlives this command and its terminal.
            process = subprocess.Popen(args, stdin=stdin, stdout=out, stderr=out, start_new_session=True)
        self.pid_file.write_text(f"{process.pid}\n")
        if not wait_until(lambda: self.running() or process.poll() is not None, 10, 0.1) or process.poll() is not None:
            raise TesthostError(f"QEMU did not start: {image.tail(self.state / 'qemu.log', 5)}")

    # ---- reboot ------------------------------------------------------------------------------------

    def reboot(self, models_disk: str | None = None, detach: tuple[str, ...] = (), cold: bool = False) -> None:
        """`systemctl reboot` in the guest: QEMU resets the machine in place, disks as they are. With
        `models_disk` (none or PATH) the machine is powered off and started again with that disk instead;
        with `detach` (serials of extra disks) it is started without those disks for this boot only, as
        when a disk dies or is pulled from a real server; `cold` powers off and on with the recorded
        disks (which puts detached disks back)."""
        if models_disk is None and not detach and not cold:
            guest.ask(self.instance, "systemctl reboot")
            return
        pid = self.pid()
        guest.ask(self.instance, "systemctl poweroff")
        if not wait_until(lambda: not pid_alive(pid), STOP_WAIT_S, 0.2):
            raise TesthostError(f"the VM did not power off within {STOP_WAIT_S} s")
        self.boot(models_disk, detach)

    # ---- down --------------------------------------------------------------------------------------

    def stop(self) -> None:
        """The disks are removed right after, so no clean shutdown is needed: QEMU stops at SIGTERM."""
        pid = self.pid()
        if pid is None:
            return
        log(f"stopping the VM (qemu pid {pid})")
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not pid_alive(pid), 10, 0.1):
            os.kill(pid, signal.SIGKILL)
            if not wait_until(lambda: not pid_alive(pid), 5, 0.1):
                raise TesthostError(f"QEMU (pid {pid}) survived SIGKILL; not removing its disks")

    def remove(self) -> None:
        guest.teardown_host_network(self.instance, self.link)
        for name in ("qemu.pid", "qmp.sock", "root.img", "models.img", "vmlinuz", "initrd.img", "qemu.json"):
            (self.state / name).unlink(missing_ok=True)
        image.remove_tree(self.state / "rootfs-vm")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
