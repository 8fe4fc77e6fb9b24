"""The guest's root filesystem: a debootstrap'd Debian 12, built once and cached as a tarball named by
its recipe, then unpacked and made into this instance's machine at every start."""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import hostconfig
from .contract import PREFIX_LENGTH, Instance
from .util import TesthostError, log, run

SUITE = "bookworm"
GUEST_PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,iproute2,ca-certificates,nftables,iptables,procps,curl,gnupg"
)
# Tarballs kept in the cache: the current recipe's and the last one used before it, so that two checkouts
# with different recipes do not rebuild each other's tarball at every start.
TARBALLS_KEPT = 2


def cache_key(*parts: str) -> str:
    """12 hex digits over the parts of a recipe: editing any of them names a new tarball."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def rootfs_key() -> str:
    # The build function's own text is part of the key, so editing the recipe rebuilds the tarball.
    return cache_key(inspect.getsource(build_rootfs), SUITE, GUEST_PACKAGES)


def host_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's own apt sources name: never hardcoded, since a CI machine may
    reach only its own mirror."""
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        if uri := hostconfig.mirror_from_deb822(path.read_text(), SUITE):
            return uri
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if path.is_file() and (uri := hostconfig.mirror_from_one_line(path.read_text(), SUITE)):
            return uri
    raise TesthostError(f"no enabled Debian '{SUITE}' main source in {apt_dir}/sources.list(.d); cannot pick a mirror")


def build_rootfs(root: Path, mirror: str, build_log: Path) -> None:
    """debootstrap plus what every instance shares. Nothing instance-specific (name, address, keys)."""
    with build_log.open("ab") as out:
        run(["debootstrap", "--variant=minbase", f"--include={GUEST_PACKAGES}", SUITE, root, mirror], stdout=out)
        # mkdtemp made this 0700 and tar keeps it as the guest's "/": every non-root service would
        # then fail with status=200/CHDIR and boot would hang for minutes.
        root.chmod(0o755)
        run(["chroot", root, "systemctl", "enable", "systemd-networkd.service", "ssh.service"], stdout=out)
        # Host keys are made at every start, never shipped in the cache.
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        run(["chroot", root, "apt-get", "clean"], stdout=out)
    shutil.rmtree(root / "var/lib/apt/lists")
    for cache in (root / "var/cache/apt").glob("*.bin"):
        cache.unlink()
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)


def pack(root: Path, tarball: Path) -> None:
    """Write the tarball atomically (a temporary name, then rename), world-readable."""
    fd, tmp = tempfile.mkstemp(dir=tarball.parent, prefix=f".{tarball.name}.")
    os.close(fd)
    try:
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", root, "-cf", "-", "."],
            stdout=subprocess.PIPE,
        )
        run(["zstd", "-q", "-T0", "-f", "-o", tmp], stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0:
            raise TesthostError(f"tar of {root} failed")
        os.chmod(tmp, 0o644)
        os.replace(tmp, tarball)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def unpack(tarball: Path, root: Path) -> None:
    remove_tree(root)
    root.mkdir(parents=True)
    run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--zstd", "-C", root, "-xf", tarball])
    root.chmod(0o755)


def remove_tree(path: Path) -> None:
    if path.exists():
        run(["rm", "-rf", "--one-file-system", "--", path])


def prune(cache_dir: Path, pattern: str, keep: Path) -> None:
    """Drop the tarballs of older recipes, keeping `keep` and the most recently used other one."""
    others = sorted((p for p in cache_dir.glob(pattern) if p != keep), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[TARBALLS_KEPT - 1 :]:
        log(f"removing the tarball of an older recipe: {old.name}")
        old.unlink()


def mark_used(tarball: Path) -> None:
    os.utime(tarball)  # the mtime orders the tarballs for prune()


class RootfsCache:
    def __init__(self, cache_dir: Path):
        self.dir = cache_dir / "rootfs"

    @property
    def tarball(self) -> Path:
        return self.dir / f"debian12-{rootfs_key()}.tar.zst"

    def build(self, force: bool = False) -> Path:
        tarball = self.tarball
        if tarball.is_file() and not force:
            log(f"rootfs tarball up to date: {tarball}")
            return tarball
        mirror = host_mirror()
        self.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        build_log = self.dir / f"debootstrap-{tarball.name.removesuffix('.tar.zst')}.log"
        build_log.write_text("")
        with tempfile.TemporaryDirectory(dir=self.dir, prefix=".build.") as work:
            log(f"debootstrap {SUITE} from {mirror} into {work} (log: {build_log})")
            try:
                build_rootfs(Path(work), mirror, build_log)
            except TesthostError as error:
                raise TesthostError(f"building the rootfs failed: {error}\n{tail(build_log, 30)}") from None
            log(f"debootstrap done after {time.monotonic() - started:.1f} s; packing")
            pack(Path(work), tarball)
            remove_tree(Path(work))
        prune(self.dir, "debian12-*.tar.zst", keep=tarball)
        log(f"built {tarball} ({tarball.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - started:.1f} s")
        return tarball


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- this instance's machine, at every start -------------------------------------------------------


def install_apt_config(root: Path, apt_dir: Path = Path("/etc/apt")) -> None:
    """The host's Debian sources (suite family, main) and its site apt.conf.d/99* settings. Done at
    every start, so that the cached tarball does not depend on them."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)  # debootstrap's own one-line entry
    target = root / "etc/apt/sources.list.d"
    for old in [*target.glob("*.sources"), *target.glob("*.list")]:
        old.unlink()
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        if kept := hostconfig.guest_deb822(path.read_text(), SUITE):
            (target / path.name).write_text(kept)
    lines = []
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            lines += hostconfig.guest_one_line(path.read_text(), SUITE)
    if lines:
        (root / "etc/apt/sources.list").write_text("\n".join(lines) + "\n")
    # 99* files shipped by a package (e.g. 99needrestart) belong to that package, not to the site.
    for path in sorted((apt_dir / "apt.conf.d").glob("99*")):
        if path.is_file() and subprocess.run(["dpkg-query", "-S", path], capture_output=True).returncode != 0:
            shutil.copy(path, root / "etc/apt/apt.conf.d" / path.name)


def host_pip_config() -> hostconfig.PipConfig:
    """This machine's effective pip configuration: pip's own merge, else pip's files and variables."""
    import sys

    for pip in ([sys.executable, "-m", "pip"], ["pip3"], ["pip"]):
        try:
            listed = subprocess.run([*pip, "config", "list"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if listed.returncode == 0:
            return hostconfig.merge_pip_config_list(listed.stdout)
    import configparser

    merged: hostconfig.PipConfig = {}
    for path in hostconfig.pip_config_files(dict(os.environ), Path.home()):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in parser.sections():
            merged.setdefault(section, {}).update(parser.items(section))
    merged.setdefault("global", {}).update(hostconfig.pip_environment(dict(os.environ)))
    return merged


def write_machine_identity(root: Path, instance: Instance, network_match: str) -> None:
    """Name, hosts file and static address; `network_match` is the [Match] line of the guest's link."""
    (root / "etc/hostname").write_text(f"{instance.machine}\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{instance.machine}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    network = root / "etc/systemd/network"
    network.mkdir(parents=True, exist_ok=True)
    # The name sorts before /usr/lib/systemd/network/80-container-host0.network, which would only give
    # the container a 169.254 address.
    (network / "10-testhost.network").write_text(
        "# testhost: static address of the guest on its link to this machine\n"
        f"[Match]\n{network_match}\n\n"
        f"[Network]\nAddress={instance.guest_address}/{PREFIX_LENGTH}\nGateway={instance.host_address}\n"
    )


def prepare_rootfs(root: Path, tarball: Path, instance: Instance, network_match: str) -> list[str]:
    """Unpack the tarball and make it this instance's machine. Returns the host folders the guest's
    pip.conf names (to be shared read-only with the guest)."""
    unpack(tarball, root)
    mark_used(tarball)
    install_apt_config(root)
    write_machine_identity(root, instance, network_match)

    # DNS: the host's resolver, copied (the guest runs no resolver of its own).
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copy(Path("/etc/resolv.conf").resolve(), resolv)
    if any(
        line.split()[1:2] and line.split()[1].startswith(("127.", "::1"))
        for line in Path("/etc/resolv.conf").read_text().splitlines()
        if line.startswith("nameserver")
    ):
        log("warning: /etc/resolv.conf names a loopback resolver, which the guest cannot reach")

    # Local CAs of the host (egress may go through a TLS-inspecting proxy): without them HTTPS from
    # the guest (pip, curl) fails certificate checks.
    local_cas = Path("/usr/local/share/ca-certificates")
    if local_cas.is_dir() and any(local_cas.iterdir()):
        run(["cp", "-a", f"{local_cas}/.", root / "usr/local/share/ca-certificates/"])
        run(["chroot", root, "update-ca-certificates"], stdout=subprocess.DEVNULL)

    run(["chroot", root, "ssh-keygen", "-A"], stdout=subprocess.DEVNULL)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    shutil.copy(instance.ssh_key.with_suffix(".pub"), authorized)
    authorized.chmod(0o600)

    pip_config = host_pip_config()
    (root / "etc/pip.conf").write_text(hostconfig.render_pip_conf(pip_config))
    shares, notes = hostconfig.pip_share_dirs(hostconfig.pip_local_paths(pip_config), root)
    for note in notes:
        log(note)
    return shares


def apt_archives(guest_cache: Path, instance: Instance) -> Path:
    """The guest's apt download cache on this machine. apt locks its archives folder (a lock file in it)
    for a whole install, so instances that run side by side each get their own, seeded with hard links
    to the shared one's packages: no download twice, no install failing on another instance's lock."""
    shared = guest_cache / "apt-archives"
    shared.mkdir(parents=True, exist_ok=True)
    if instance.number == 0:
        return shared
    own = guest_cache / f"apt-archives-{instance.number}"
    own.mkdir(exist_ok=True)
    for package in shared.glob("*.deb"):
        target = own / package.name
        if not target.exists():
            try:
                os.link(package, target)
            except OSError:
                shutil.copy2(package, target)
    return own
