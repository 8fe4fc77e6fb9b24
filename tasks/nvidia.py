"""The NVIDIA layer (production): driver with the open kernel modules (the RTX 5090 needs >= 570),
CUDA toolkit >= 12.8 from NVIDIA's apt repository, and nvidia-container-toolkit for Docker.

Nothing is reinstalled when the packages are present. A new driver needs a reboot: done only when
`nvidia.reboot_allowed` says so, otherwise the run ends with a clear "reboot required". Skipped, with
one message, on a host without an NVIDIA GPU (gpu.present = False).

Every download is checked: the CUDA repository's signing key and the container toolkit's key by
fingerprint, as Docker's is. The driver stays on the branch in data (an apt pin): a new branch is a
decision, not an upgrade."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import deploy, operation
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, python, server

from kca_stack import Stack

from . import ops
from .base import fetch_signing_key, os_profile


def _reboot_required(message: str) -> None:
    logger.warning(message)


def signed_repository(label: str, key_url: str, keyring: str, fingerprint: str, url: str, sources: str):
    """One of NVIDIA's flat apt repositories: its signing key, refused unless it has `fingerprint`, the
    source line signed by it, and a package index refreshed when that line changed."""
    fetch_signing_key(f"{label} key", key_url, keyring, fingerprint, dearmor=True)
    written = ops.install_files(
        name=f"Add {label}",
        files=[ops.HostFile(sources, text=f"deb [signed-by={keyring}] {url} /\n")],
    )
    apt.update(name=f"Refresh the package index ({label} changed)", _if=written.did_change)


@operation()
def say_driver_age(min_major: int):
    """A warning when the driver found is older than the GPU needs (this run installs the newer one)."""
    installed = (
        host.get_fact(
            Command,
            command="nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 || true",
        )
        or ""
    )
    major = int(installed.split(".")[0]) if installed[:1].isdigit() else 0
    if major and major < min_major:
        logger.warning(
            f"{host.name}: driver {installed} is older than {min_major}: "
            "the RTX 5090 needs the newer open driver, which this run installs"
        )
    host.noop(f"driver {installed or 'none'} found")
    return
    yield


@deploy("NVIDIA layer")
def deploy_nvidia(stack: Stack) -> None:
    if not stack.gpu.present:
        logger.info(f"{host.name}: NVIDIA layer skipped: gpu.present is false on this host")
        return
    nvidia = stack.nvidia
    repo = os_profile(stack)["nvidia_repo"]

    ops.packages(name="Install gnupg (checks the repositories' keys)", packages=["gnupg"])
    cuda = nvidia.cuda_repository
    signed_repository(
        "NVIDIA's CUDA repository",
        cuda.key_url.format(repo=repo),
        cuda.keyring,
        cuda.key_fingerprint,
        cuda.repo_url.format(repo=repo),
        "/etc/apt/sources.list.d/cuda.list",
    )

    # Before any driver package is chosen: apt may pick NVIDIA's packages only from the pinned branch.
    branch = nvidia.driver_branch
    ops.install_files(
        name=f"Pin the NVIDIA driver to branch {branch}",
        files=[
            ops.HostFile(
                "/etc/apt/preferences.d/kca-nvidia-driver",
                text=(
                    "# Managed by kca-ai-infra (tasks/nvidia.py): NVIDIA's driver stays on the branch in\n"
                    "# group_data (nvidia.driver_branch); other versions of these packages keep apt's default.\n"
                    f"Package: {' '.join(nvidia.driver_pin_packages)}\n"
                    f"Pin: version {branch}.*\n"
                    "Pin-Priority: 1001\n"
                ),
            )
        ],
    )

    say_driver_age(name="Check the installed NVIDIA driver's version", min_major=nvidia.driver_min_major)
    # DKMS builds the open modules for every installed kernel, so kernel upgrades keep the driver.
    driver = ops.packages(
        name=f"Install the NVIDIA driver ({', '.join(nvidia.driver_packages)}, open kernel modules)",
        packages=list(nvidia.driver_packages),
        no_recommends=False,
    )
    ops.packages(
        name=f"Install the CUDA toolkit ({', '.join(nvidia.cuda_packages)})",
        packages=list(nvidia.cuda_packages),
        no_recommends=False,
    )
    files.line(
        name="Put nvcc on the PATH of login shells",
        path="/etc/profile.d/cuda.sh",
        line=f"export PATH={nvidia.cuda_home}/bin:$PATH",
    )

    toolkit = nvidia.container_toolkit
    signed_repository(
        "NVIDIA's container toolkit repository",
        toolkit.key_url,
        toolkit.keyring,
        toolkit.key_fingerprint,
        toolkit.repo_url,
        "/etc/apt/sources.list.d/nvidia-container-toolkit.list",
    )
    # The Docker layer declares the nvidia runtime in daemon.json itself (what `nvidia-ctk runtime
    # configure` would write), so that one file has one writer.
    ops.packages(name="Install nvidia-container-toolkit", packages=list(toolkit.packages), no_recommends=False)

    if nvidia.reboot_allowed:
        server.reboot(name="Reboot into the new NVIDIA driver", _if=driver.did_change)
    else:
        python.call(
            name="Say that a reboot is required (nvidia.reboot_allowed is false)",
            function=_reboot_required,
            message=f"{host.name}: REBOOT REQUIRED: the NVIDIA driver changed; GPU services start after a reboot",
            _if=driver.did_change,
        )
