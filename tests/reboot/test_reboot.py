"""The test host reboots for real, as the server does after a power cut or a kernel update, and the
stack comes back by itself: the firewall (kca-firewall.service, WantedBy=sysinit.target) is loaded
before any service listens, no internal port answers from outside at any moment of the boot, the boot
scenario's services come back, and the health table (tools/health_check.py) turns green. Prints the
time from the reboot to all healthy.

`testhost reboot` reboots the guest and keeps its root filesystem. On the container backend this is
its own stage of ./kca test (after the host tests, which it would otherwise disturb); the VM backend's
reboot, with /models on its own disk, is in tests/vm.
"""

from __future__ import annotations

import subprocess
import sys
import time

from boot_probe import Prober  # tests/boot_probe.py

from testhost import contract

ROOT = contract.__file__.rsplit("/testhost/", 1)[0]
TESTHOST_INSTANCE = contract.instance()
TESTHOST = [f"{ROOT}/testhost/testhost"]
HEALTHY_WITHIN_S = 600  # a bound for the test, not a target: the figure is printed


def remote(ssh_target: list[str], command: str) -> str:
    return subprocess.run(["ssh", *ssh_target, command], capture_output=True, text=True, check=True).stdout.strip()


def test_reboot_firewall_first_and_the_boot_scenario_back_healthy(stack, ssh_target, target_address):
    internal = sorted({port.number for port, service in stack.port_map() if service.exposure == "internal"})
    boot_units = [s.unit for s in stack.systemd_services() if stack.starts_at_boot(s) and stack.runnable_here(s)]
    boot_id = remote(ssh_target, "cat /proc/sys/kernel/random/boot_id")

    prober = Prober(target_address, internal, device=TESTHOST_INSTANCE.container_link)
    prober.start()
    started = time.monotonic()
    reboot = subprocess.run([*TESTHOST, "reboot"], capture_output=True, text=True)
    try:
        assert reboot.returncode == 0, reboot.stdout + reboot.stderr
        print(f"\n{reboot.stdout.strip()}")
        # Healthy: the same table an operator reads after a deploy, every row that should answer does.
        health = None
        while time.monotonic() - started < HEALTHY_WITHIN_S:
            health = subprocess.run([sys.executable, f"{ROOT}/tools/health_check.py"], capture_output=True, text=True)
            if health.returncode == 0:
                break
            time.sleep(3)
        healthy_after = time.monotonic() - started
    finally:
        prober.finish()
    assert health is not None and health.returncode == 0, f"not healthy {HEALTHY_WITHIN_S} s after the reboot:\n" + (
        health.stdout + health.stderr if health else ""
    )
    print(health.stdout)
    print(f"reboot to all healthy: {healthy_after:.0f} s")
    assert remote(ssh_target, "cat /proc/sys/kernel/random/boot_id") != boot_id, "the guest did not reboot"

    opened = prober.opened(started)
    assert not opened, f"internal ports answered from outside during the boot (s, port): {opened[:5]}"
    assert prober.ssh_seen_after(started), "the probe never saw SSH come back: it could not see the ports either"
    print(f"probed the internal ports {internal} {prober.count()} times during the boot: never reachable")

    # Ordering from systemd's own record of this boot: the firewall before each listener and Docker.
    def monotonic(unit: str, what: str) -> int:
        return int(remote(ssh_target, f"systemctl show -p {what} --value {unit}") or 0)

    firewall = monotonic("kca-firewall.service", "ActiveEnterTimestampMonotonic")
    assert firewall > 0, "kca-firewall.service did not start at boot"
    for unit in [*boot_units, "docker.service"]:
        assert remote(ssh_target, f"systemctl is-active {unit}") == "active", f"{unit} did not come back"
        assert firewall < monotonic(unit, "ExecMainStartTimestampMonotonic"), f"{unit} started before the firewall"
