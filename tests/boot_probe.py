"""Knocking on a guest's ports from outside while it reboots: what answered, and when. Shared by the
reboot tests of both test-host backends (tests/reboot for the container, tests/vm for the VM)."""

from __future__ import annotations

import socket
import threading
import time


class Prober(threading.Thread):
    """Connects to the guest from this machine over and over. The internal ports are tried every 0.2 s
    (each with a short timeout, since a firewall that drops answers nothing); SSH every 2 s only (sshd
    throttles a burst of unauthenticated connections)."""

    def __init__(self, address: str, internal: list[int], timeout: float = 0.3):
        super().__init__(daemon=True)
        self.address, self.internal, self.timeout = address, internal, timeout
        self.stop = threading.Event()
        self.seen: list[tuple[float, int, str]] = []

    def knock(self, port: int) -> None:
        try:
            with socket.create_connection((self.address, port), timeout=self.timeout):
                verdict = "open"
        except ConnectionRefusedError:
            verdict = "refused"
        except OSError:
            verdict = "no answer"
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
