"""How this machine reaches the target's services: external ones directly, internal ones through an
SSH tunnel to the host's loopback (the firewall drops them from outside, as it should). Used by the
post-deploy health table and the host tests. (It runs ssh, so it lives here and not in the pure
kca_stack package.)"""

from __future__ import annotations

import socket
import subprocess
import time

from testhost.contract import Instance


def ssh_args(target: str, testhost: Instance) -> list[str]:
    """ssh arguments for `target` (user@address): the test host's own key, or the user's ssh setup."""
    args = ["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
    if target.rsplit("@", 1)[-1] == testhost.guest_address:
        args += ["-i", str(testhost.ssh_key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return [*args, target]


class Tunnels:
    """One `ssh -N -L` per internal port, opened on first use, closed with close()."""

    def __init__(self, ssh_target: list[str]):
        self.ssh_target = ssh_target
        self.open: dict[int, tuple[int, subprocess.Popen]] = {}

    def local_port(self, remote_port: int) -> int:
        if remote_port not in self.open:
            local = free_port()
            forward = ["ssh", "-N", "-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}", *self.ssh_target]
            process = subprocess.Popen(forward, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wait_for_port(local, process)
            self.open[remote_port] = (local, process)
        return self.open[remote_port][0]

    def close(self) -> None:
        for _, process in self.open.values():
            process.terminate()
            process.wait(timeout=10)
        self.open.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ssh tunnel failed: {process.stderr.read().decode()[-500:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"ssh tunnel to local port {port} did not open in {timeout:g} s")
