"""Base layer: the kca user, the /models filesystem, the document's directory tree, base packages and
the Python environment at /models/venv (with the /home/kca/venv symlink)."""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, pip, server

from kca_stack import Service, Stack
from kca_stack.validate import moving_refs

from .util import first_not_owned, remote_output


def os_profile(stack: Stack) -> dict:
    """The OS-specific constants for this host (package names, python), picked by its release."""
    distro = host.get_fact(LinuxDistribution)
    key = f"{distro['name'].split()[0].lower()}-{distro['release_meta'].get('VERSION_ID', '')}"
    if key not in stack.os_profiles:
        raise SystemExit(f"{host.name}: unsupported OS {key!r}; supported: {', '.join(stack.os_profiles)}")
    return stack.os_profiles[key]


def fetch_signing_key(label: str, url: str, keyring: str, fingerprint: str, dearmor: bool) -> None:
    """An apt repository's signing key into `keyring`, refused unless it has `fingerprint`; fetched once
    (a keyring that is there is left alone). `dearmor`: store it binary (a .gpg keyring)."""
    if host.get_fact(File, path=keyring):
        return
    wanted = fingerprint.replace(" ", "").upper()
    tmp = f"{keyring}.new"
    store = f"gpg --dearmor --yes -o {keyring} {tmp}" if dearmor else f"install -m 0644 {tmp} {keyring}"
    server.shell(
        name=f"Fetch {label} and check its fingerprint",
        commands=[
            f"curl -fsSL {shlex.quote(url)} -o {tmp}",
            f"gpg --show-keys --with-colons {tmp} | grep -q '^fpr:::::::::{wanted}:'"
            f" || {{ echo '{label}: fingerprint is not {wanted}' >&2; rm -f {tmp}; exit 1; }}",
            f"{store} && rm -f {tmp}",
        ],
    )


def packages_missing(wanted: list[str]) -> list[str]:
    installed = host.get_fact(DebPackages)
    return [name for name in wanted if name not in installed]


def warn_moving_refs(stack: Stack) -> None:
    """Once per deploy: what this host fetches by a reference that can still move under it."""
    refs = moving_refs(stack)
    if refs:
        listing = "\n".join(f"    - {ref}" for ref in refs)
        logger.warning(f"{host.name}: {len(refs)} fetched ref(s) still move; pin them in group_data:\n{listing}")


def mounts_needed_by(stack: Stack, service: Service) -> list[str]:
    """The models mount point when the service reads from it (its models, its venv) and /models is a
    device: its unit then carries RequiresMountsFor= and fails cleanly when the disk is missing."""
    fs = stack.models_filesystem
    if fs.device is None:
        return []
    venv_name = getattr(service.settings, "venv", None) or (stack.vllm.venv if service.kind == "vllm" else "")
    venv = stack.venvs.get(venv_name)
    paths = [stack.models[name].dir for name in service.models if name in stack.models]
    paths += [venv.path] if venv else []
    inside = [p for p in paths if p == fs.mountpoint or p.startswith(fs.mountpoint.rstrip("/") + "/")]
    return [fs.mountpoint] if inside else []


@deploy("Base layer")
def deploy_base(stack: Stack) -> None:
    warn_moving_refs(stack)
    profile = os_profile(stack)

    server.user(
        name=f"Create the {stack.user.name} user",
        user=stack.user.name,
        uid=stack.user.uid,
        home=stack.user.home,
        shell=stack.user.shell,
        create_home=True,
    )

    mount_models_filesystem(stack)

    for directory in stack.directories:
        files.directory(
            name=f"Create {directory.path}",
            path=directory.path,
            # Unmanaged directories (Docker volumes) are only created: their owner is the container's.
            user=directory.owner if directory.manage else None,
            group=directory.owner if directory.manage else None,
            mode=directory.mode if directory.manage else None,
        )

    wanted = list(stack.base_packages) + list(profile.get("extra_packages", []))
    missing = packages_missing(wanted)
    apt.packages(
        name="Install base packages",
        packages=wanted,
        # Refresh the index only when something must be installed: a converged host stays quiet.
        update=bool(missing),
        no_recommends=True,
    )

    for venv in stack.venvs.values():
        # Root's, like /models that holds it (group_data venvs): root runs pip and Python here, so no
        # other user may write here. A host whose venvs were kca's is handed back to root once.
        pip.venv(
            name=f"Create the Python environment {venv.path}",
            path=venv.path,
            python=profile["python"],
        )
        not_roots = first_not_owned(venv.path, "root", 0)
        if not_roots:
            server.shell(
                name=f"Give {venv.path} back to root (it held files of another user)",
                commands=[f"chown -hR root:root {venv.path}"],
            )
        if venv.link:
            files.link(
                name=f"Link {venv.link} to {venv.path}",
                path=venv.link,
                target=venv.path,
                user=stack.user.name,
                group=stack.user.name,
            )


def mount_models_filesystem(stack: Stack) -> None:
    """/models on its own partition, mounted by UUID. Never formats a device that holds a
    filesystem; refuses, with the reason, when the device named in data is missing."""
    fs = stack.models_filesystem
    if fs.device is None:
        # kca_stack refused this before the first operation unless the data says so explicitly.
        logger.info(f"{host.name}: {fs.mountpoint} is a plain directory (models_filesystem.plain_directory)")
        return

    # One fact answers three questions: does the device exist, does it hold a filesystem, its UUID.
    probe = remote_output(
        f"if [ -b {fs.device} ]; then blkid -o export {fs.device} || echo NOFS=1; else echo MISSING=1; fi",
    )
    found = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
    if "MISSING" in found:
        raise SystemExit(
            f"{host.name}: models_filesystem.device {fs.device} does not exist; nothing was changed. "
            "Fix: set KCA_MODELS_DEVICE to the /models partition (lsblk lists them)."
        )
    if "PTTYPE" in found:
        # A whole disk with a partition table: blkid gives no filesystem UUID, yet it is not empty.
        raise SystemExit(
            f"{host.name}: {fs.device} holds a {found['PTTYPE']} partition table; refusing to format or mount it; "
            "nothing was changed. Fix: set KCA_MODELS_DEVICE to the partition that holds /models "
            "(lsblk lists them), not the whole disk."
        )
    files.directory(name=f"Create the mount point {fs.mountpoint}", path=fs.mountpoint)
    fstab_tail = f"{fs.mountpoint} {fs.fstype} {fs.options} 0 2"
    if "NOFS" in found or "UUID" not in found:
        if not fs.format_empty:
            raise SystemExit(
                f"{host.name}: {fs.device} holds no filesystem; refusing to format it. Fix: after checking "
                "it is the right disk, set models_filesystem.format_empty = True for one run."
            )
        # The UUID exists only after mkfs, so the fstab line is written in the same command.
        server.shell(
            name=f"Format the empty device {fs.device} and add it to /etc/fstab",
            commands=[
                f"mkfs -t {fs.fstype} -L models {fs.device}",
                f'echo "UUID=$(blkid -s UUID -o value {fs.device}) {fstab_tail}" >> /etc/fstab',
            ],
        )
    else:
        if found.get("TYPE") != fs.fstype:
            raise SystemExit(
                f"{host.name}: {fs.device} holds {found.get('TYPE')}, models_filesystem.fstype says {fs.fstype}; "
                "nothing was changed. Fix: set models_filesystem.fstype to what the disk holds."
            )
        files.line(
            name=f"Mount {fs.mountpoint} by UUID in /etc/fstab",
            path="/etc/fstab",
            line=rf"^\S+\s+{fs.mountpoint}\s+.*$",
            replace=f"UUID={found['UUID']} {fstab_tail}",
        )
    server.mount(name=f"Mount {fs.mountpoint}", path=fs.mountpoint, mounted=True)
