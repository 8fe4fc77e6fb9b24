"""Base layer: the /models filesystem, the document's directory tree, base packages and the Python
environments under /models (with the /home/kca/venv symlink). The kca user comes first, with the
service identities (tasks/identities.py)."""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.server import Command, LinuxDistribution
from pyinfra.operations import files, server

from kca_stack import Service, Stack
from kca_stack.validate import moving_refs

from . import ops
from .util import all_owned_by_test, owned_by_test

# Read once per host and run: several layers pick their package names from the profile.
_PROFILES: dict[str, dict] = {}


def os_profile(stack: Stack) -> dict:
    """The OS-specific constants for this host (package names, python), picked by its release."""
    if host.name not in _PROFILES:
        distro = host.get_fact(LinuxDistribution)
        key = f"{distro['name'].split()[0].lower()}-{distro['release_meta'].get('VERSION_ID', '')}"
        if key not in stack.os_profiles:
            raise SystemExit(f"{host.name}: unsupported OS {key!r}; supported: {', '.join(stack.os_profiles)}")
        _PROFILES[host.name] = stack.os_profiles[key]
    return _PROFILES[host.name]


def fetch_signing_key(label: str, url: str, keyring: str, fingerprint: str, dearmor: bool):
    """An apt repository's signing key into `keyring`, refused unless it has `fingerprint`; fetched once
    (a keyring that is there is left alone). `dearmor`: store it binary (a .gpg keyring).

    Not files.download(sha256sum=...): the data pins the key by its fingerprint, which outlives a new
    armoring or a new signature on the same key; the file's own bytes are not pinned anywhere."""
    wanted = fingerprint.replace(" ", "").upper()
    tmp = f"{keyring}.new"
    store = f"gpg --dearmor --yes -o {keyring} {tmp}" if dearmor else f"install -m 0644 {tmp} {keyring}"
    return ops.shell_unless(
        name=f"Fetch {label} and check its fingerprint",
        done=f"[ -s {shlex.quote(keyring)} ]",
        commands=[
            f"curl -fsSL {shlex.quote(url)} -o {tmp}",
            f"gpg --show-keys --with-colons {tmp} | grep -q '^fpr:::::::::{wanted}:'"
            f" || {{ echo '{label}: fingerprint is not {wanted}' >&2; rm -f {tmp}; exit 1; }}",
            f"{store} && rm -f {tmp}",
        ],
    )


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

    mount_models_filesystem(stack)

    ops.directories(
        name="Create the directory tree",
        dirs=[
            # Unmanaged directories (Docker volumes) are only created: their owner is the container's.
            ops.HostDirectory(d.path, d.owner, d.owner, d.mode) if d.manage else ops.HostDirectory(d.path)
            for d in stack.directories
        ],
    )

    ops.packages(
        name="Install base packages",
        packages=list(stack.base_packages) + list(profile.get("extra_packages", [])),
    )

    # Root's, like /models that holds them (group_data venvs): root runs pip and Python there, so no
    # other user may write there. A host whose venvs were kca's is handed back to root.
    done, commands = [all_owned_by_test([v.path for v in stack.venvs.values()], "root", 0)], []
    for venv in stack.venvs.values():
        path = shlex.quote(venv.path)
        done.append(f"[ -f {path}/bin/activate ]")
        commands += [
            f"[ -f {path}/bin/activate ] || {profile['python']} -m venv {path}",
            f"{owned_by_test(venv.path, 'root', 0)} || chown -hR root:root {path}",
        ]
        if venv.link:
            link, owner = shlex.quote(venv.link), f"{stack.user.name}:{stack.user.name}"
            done.append(f'[ "$(readlink {link})" = {path} ] && [ "$(stat -c %U:%G {link})" = {owner} ]')
            commands.append(f"ln -sfn {path} {link} && chown -h {owner} {link}")
    ops.shell_unless(
        name=f"Create the Python environments, root's ({', '.join(v.path for v in stack.venvs.values())})",
        done=" && ".join(done),
        commands=commands,
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
    # Read while planning, on purpose: a refusal comes before the first change.
    probe = (
        host.get_fact(
            Command,
            command=f"if [ -b {fs.device} ]; then blkid -o export {fs.device} || echo NOFS=1; else echo MISSING=1; fi",
        )
        or ""
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
