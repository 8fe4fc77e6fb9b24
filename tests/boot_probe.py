"""Knocking on a guest's ports from outside while it reboots: what answered, and when. Shared by the
reboot tests of both test-host backends (tests/reboot for the container, tests/vm for the VM)."""

from __future__ import annotations

import socket
import threading
import time


class Prober(threading.Thread):
    """Connects to the guest from this machine over and over. The internal ports are tried every 0.2 s
    (each with a short timeout, since a firewall that drops answers nothing); SSH every 2 s only (sshd
    throttles a burst of unauthenticated connections).

    Every connection is bound to the guest's link on this machine (`device`, SO_BINDTODEVICE): while the
    guest is down its link is gone, and a connection that left by another route (this machine's default
    one, where a middlebox may accept any TCP connection) would be taken for the guest answering."""

    def __init__(self, address: str, internal: list[int], device: str, timeout: float = 0.3):
        super().__init__(daemon=True)
        self.address, self.internal, self.device, self.timeout = address, internal, device, timeout
        self.stop = threading.Event()
        self.seen: list[tuple[float, int, str]] = []

    def knock(self, port: int) -> None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.device.encode())
                sock.settimeout(self.timeout)
                sock.connect((self.address, port))
                verdict = "open"
        except ConnectionRefusedError:
            verdict = "refused"
        except OSError:
            verdict = "no answer"  # dropped, timed out, or the link is gone (the guest is down)
        self.seen.append((time.monotonic(), port, verdict))

    def run(self):
        rounds = 0
        while not self.stop.is_set():
            for port in self.internal:
                self.knock(port)
            if rounds % 10 == 0:
                self.knock(22)
            rounds += 1
            time.sleep(0.2)

    def finish(self) -> None:
        self.stop.set()
        self.join()

    def opened(self, started: float) -> list[tuple[float, int]]:
        """(seconds into the reboot, port) of every internal port that answered."""
        return [(t - started, port) for t, port, verdict in self.seen if port in self.internal and verdict == "open"]

    def ssh_seen_after(self, started: float) -> bool:
        """Whether SSH answered during the reboot: without it, the probe proves nothing."""
        return any(t > started for t, port, verdict in self.seen if port == 22 and verdict == "open")

    def count(self) -> int:
        return sum(1 for _, port, _ in self.seen if port in self.internal)
