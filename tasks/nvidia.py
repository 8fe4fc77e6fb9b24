"""The NVIDIA layer (production): driver with the open kernel modules (the RTX 5090 needs >= 570),
CUDA toolkit >= 12.8 from NVIDIA's apt repository, and nvidia-container-toolkit for Docker.

Nothing is reinstalled when the packages are present. A new driver needs a reboot: done only when
`nvidia.reboot_allowed` says so, otherwise the run ends with a clear "reboot required". Skipped, with
one message, on a host without an NVIDIA GPU (gpu.present = False).

Every download is checked: the cuda-keyring package by sha256 (the deploy refuses to fetch it until
`nvidia.cuda_keyring_sha256` is set), the container toolkit's key by fingerprint, as Docker's is. The
driver stays on the branch in data (an apt pin): a new branch is a decision, not an upgrade."""

from __future__ import annotations

from io import BytesIO

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, python, server

from kca_stack import Stack

from .base import fetch_signing_key, os_profile, packages_missing
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
        url = nvidia.cuda_keyring_url.format(repo=repo)
        if not nvidia.cuda_keyring_sha256:
            raise SystemExit(
                f"{host.name}: nvidia.cuda_keyring_sha256 is unset, so the cuda-keyring package cannot be checked; "
                f"nothing was fetched. Fix: run `curl -fsSL {url} | sha256sum` once and set "
                "nvidia.cuda_keyring_sha256 in group_data/all.py."
            )
        keyring_deb = "/var/cache/apt/archives/kca-cuda-keyring.deb"
        files.download(
            name="Fetch NVIDIA's cuda-keyring package (checked by sha256)",
            src=url,
            dest=keyring_deb,
            sha256sum=nvidia.cuda_keyring_sha256,
        )
        server.shell(
            name="Add NVIDIA's CUDA repository (cuda-keyring)",
            commands=[f"dpkg -i {keyring_deb}", "apt-get update -qq"],
        )

    # Before any driver package is chosen: apt may pick NVIDIA's packages only from the pinned branch.
    branch = nvidia.driver_branch
    files.put(
        name=f"Pin the NVIDIA driver to branch {branch}",
        src=BytesIO(
            (
                "# Managed by kca-ai-infra (tasks/nvidia.py): NVIDIA's driver stays on the branch in\n"
                "# group_data (nvidia.driver_branch); other versions of these packages keep apt's default.\n"
                f"Package: {' '.join(nvidia.driver_pin_packages)}\n"
                f"Pin: version {branch}.*\n"
                "Pin-Priority: 1001\n"
            ).encode()
        ),
        dest="/etc/apt/preferences.d/kca-nvidia-driver",
        mode="0644",
    )

    installed = remote_output("nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1")
    major = int(installed.split(".")[0]) if installed[:1].isdigit() else 0
    if major and major < nvidia.driver_min_major:
        logger.warning(
            f"{host.name}: driver {installed} is older than {nvidia.driver_min_major}: "
            "the RTX 5090 needs the newer open driver, which this run installs"
        )
    # DKMS builds the open modules for every installed kernel, so kernel upgrades keep the driver.
    driver = apt.packages(
        name=f"Install the NVIDIA driver ({', '.join(nvidia.driver_packages)}, open kernel modules)",
        packages=list(nvidia.driver_packages),
        update=bool(packages_missing(list(nvidia.driver_packages))),
    )
    apt.packages(
        name=f"Install the CUDA toolkit ({', '.join(nvidia.cuda_packages)})",
        packages=list(nvidia.cuda_packages),
    )
    files.line(
        name="Put nvcc on the PATH of login shells",
        path="/etc/profile.d/cuda.sh",
        line=f"export PATH={nvidia.cuda_home}/bin:$PATH",
    )

    toolkit = nvidia.container_toolkit
    keyring = toolkit.keyring
    if not host.get_fact(File, path=keyring):
        apt.packages(name="Install gnupg (checks the toolkit key)", packages=["gnupg"], no_recommends=True)
    fetch_signing_key("NVIDIA's container toolkit key", toolkit.key_url, keyring, toolkit.key_fingerprint, dearmor=True)
    if packages_missing(list(toolkit.packages)):
        server.shell(
            name="Add NVIDIA's container toolkit repository",
            commands=[
                f"echo 'deb [signed-by={keyring}] {toolkit.repo_url} /' "
                "> /etc/apt/sources.list.d/nvidia-container-toolkit.list",
                "apt-get update -qq",
            ],
        )
    # The Docker layer declares the nvidia runtime in daemon.json itself (what `nvidia-ctk runtime
    # configure` would write), so that one file has one writer.
    apt.packages(name="Install nvidia-container-toolkit", packages=list(toolkit.packages))

    if nvidia.reboot_allowed:
        server.reboot(name="Reboot into the new NVIDIA driver", _if=driver.did_change)
    else:
        python.call(
            name="Say that a reboot is required (nvidia.reboot_allowed is false)",
            function=_reboot_required,
            message=f"{host.name}: REBOOT REQUIRED: the NVIDIA driver changed; GPU services start after a reboot",
            _if=driver.did_change,
        )
