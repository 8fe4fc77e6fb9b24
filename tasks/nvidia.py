"""The NVIDIA layer (production): driver with the open kernel modules (the RTX 5090 needs >= 570),
CUDA toolkit >= 12.8 from NVIDIA's apt repository, and nvidia-container-toolkit for Docker.

Nothing is reinstalled when the packages are present. A new driver needs a reboot: done only when
`nvidia.reboot_allowed` says so, otherwise the run ends with a clear "reboot required". Skipped, with
one message, on a host without an NVIDIA GPU (gpu.present = False)."""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import apt, files, python, server

from kca_stack import Stack

from .base import os_profile, packages_missing
from .util import remote_output


def _reboot_required(message: str) -> None:
    logger.warning(message)


@deploy("NVIDIA layer")
def deploy_nvidia(stack: Stack) -> None:
    if not stack.gpu.present:
        logger.info(f"{host.name}: NVIDIA layer skipped: gpu.present is false on this host")
        return
    nvidia = stack.nvidia
    repo = os_profile(stack)["nvidia_repo"]

    # NVIDIA's CUDA repository, through its keyring package (the repository signs everything else).
    if packages_missing(["cuda-keyring"]):
        url = nvidia["cuda_keyring_url"].format(repo=repo)
        server.shell(
            name="Add NVIDIA's CUDA repository (cuda-keyring)",
            commands=[
                f"curl -fsSL {shlex.quote(url)} -o /tmp/cuda-keyring.deb",
                "dpkg -i /tmp/cuda-keyring.deb && rm -f /tmp/cuda-keyring.deb",
                "apt-get update -qq",
            ],
        )

    installed = remote_output("nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1")
    major = int(installed.split(".")[0]) if installed[:1].isdigit() else 0
    if major and major < nvidia["driver_min_major"]:
        logger.warning(
            f"{host.name}: driver {installed} is older than {nvidia['driver_min_major']}: "
            "the RTX 5090 needs the newer open driver, which this run installs"
        )
    # DKMS builds the open modules for every installed kernel, so kernel upgrades keep the driver.
    driver = apt.packages(
        name=f"Install the NVIDIA driver ({', '.join(nvidia['driver_packages'])}, open kernel modules)",
        packages=list(nvidia["driver_packages"]),
        update=bool(packages_missing(list(nvidia["driver_packages"]))),
    )
    apt.packages(
        name=f"Install the CUDA toolkit ({', '.join(nvidia['cuda_packages'])})",
        packages=list(nvidia["cuda_packages"]),
    )
    files.line(
        name="Put nvcc on the PATH of login shells",
        path="/etc/profile.d/cuda.sh",
        line=f"export PATH={nvidia['cuda_home']}/bin:$PATH",
    )

    toolkit = nvidia["container_toolkit"]
    if packages_missing(list(toolkit["packages"])):
        server.shell(
            name="Add NVIDIA's container toolkit repository",
            commands=[
                f"curl -fsSL {shlex.quote(toolkit['key_url'])} | gpg --dearmor --yes -o {toolkit['keyring']}",
                f"echo 'deb [signed-by={toolkit['keyring']}] {toolkit['repo_url']} /' "
                "> /etc/apt/sources.list.d/nvidia-container-toolkit.list",
                "apt-get update -qq",
            ],
        )
    # The Docker layer declares the nvidia runtime in daemon.json itself (what `nvidia-ctk runtime
    # configure` would write), so that one file has one writer.
    apt.packages(name="Install nvidia-container-toolkit", packages=list(toolkit["packages"]))

    if nvidia["reboot_allowed"]:
        server.reboot(name="Reboot into the new NVIDIA driver", _if=driver.did_change)
    else:
        python.call(
            name="Say that a reboot is required (nvidia.reboot_allowed is false)",
            function=_reboot_required,
            message=f"{host.name}: REBOOT REQUIRED: the NVIDIA driver changed; GPU services start after a reboot",
            _if=driver.did_change,
        )
