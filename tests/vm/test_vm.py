"""What only a VM shows: /models on its own disk (tasks/base.py, mount_models_filesystem), and the
firewall and services across a real reboot (tasks/firewall.py, kca-firewall.service). One VM, one disk
per case (group_data/testvm.py); the tests run in file order, each leaving the VM as the next expects.

Run with `-s` to see the timings.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

from boot_probe import Prober  # tests/boot_probe.py

from kca_stack import build_stack
from kca_stack.data import group_data
from kca_stack.firewall import TABLE

from .conftest import DISK_FILES, ROOT, TESTHOST, VM_DATA, sha256

MOUNTPOINT = group_data("testhost")["models_filesystem"]["mountpoint"]
PROBE_UNIT = "kca-boot-probe.service"


def refused_unchanged(vm, case: str, expected: str, format_empty: bool = False) -> None:
    before = sha256(vm.disks[case])
    run = vm.deploy(case, format_empty=format_empty)
    assert run.returncode != 0, f"the deploy accepted the {case} disk:\n{run.output[-3000:]}"
    assert expected in run.output, run.output[-3000:]
    assert sha256(vm.disks[case]) == before, f"the {case} disk changed"
    assert "Starting operation" not in run.output


# ---- refusals (each before any operation runs) ------------------------------------------------------


def test_missing_device_is_refused(vm):
    """mount_models_filesystem: the MISSING branch."""
    run = vm.deploy(None)
    assert run.returncode != 0
    assert "/dev/disk/by-id/virtio-no-such-disk does not exist; nothing was changed" in run.output, run.output[-3000:]
    vm.timings["refused deploy (missing device)"] = run.seconds


def test_empty_disk_without_format_empty_is_refused_and_untouched(vm):
    """mount_models_filesystem: no filesystem and format_empty unset."""
    refused_unchanged(vm, "empty", "holds no filesystem; refusing to format it")


def test_disk_with_another_filesystem_is_refused_and_untouched(vm):
    """mount_models_filesystem: TYPE differs from models_filesystem.fstype, even with format_empty."""
    refused_unchanged(vm, "other_fs", "holds ext3, models_filesystem.fstype says ext4", format_empty=True)


# ---- a disk that holds a filesystem and files --------------------------------------------------------


def test_disk_with_files_is_mounted_by_uuid_and_never_formatted(vm):
    """mount_models_filesystem: the existing-filesystem branch (fstab line by UUID, server.mount)."""
    uuid = subprocess.run(
        ["blkid", "-s", "UUID", "-o", "value", vm.disks["files"]], capture_output=True, text=True, check=True
    ).stdout.strip()
    run = vm.deploy("files")
    assert run.returncode == 0, run.output[-4000:]
    vm.timings[f"first deploy, layers {vm.deploy_layers()}"] = run.seconds
    assert vm.ssh(f"findmnt -n -o SOURCE,UUID {MOUNTPOINT}").split()[1] == uuid
    assert f"UUID={uuid} {MOUNTPOINT} " in vm.ssh("cat /etc/fstab")
    for relative, data in DISK_FILES.items():
        digest = vm.ssh(f"sha256sum {MOUNTPOINT}/{relative}").split()[0]
        assert digest == hashlib.sha256(data).hexdigest(), relative


def test_second_deploy_changes_nothing(vm, tmp_path):
    run = vm.deploy("files", json=True)
    vm.timings["second deploy (no change expected)"] = run.seconds
    results = tmp_path / "redeploy.json"
    results.write_text(run.stdout)
    check = subprocess.run(
        [sys.executable, "tools/pyinfra_results.py", results, "--expect-no-change"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr + run.output[-2000:]


# ---- reboot ------------------------------------------------------------------------------------------


def test_reboot_firewall_before_listeners_and_everything_back(vm):
    """kca-firewall.service (WantedBy=sysinit.target, Before=network-pre.target) across a real reboot:
    an internal port is never reachable from outside while the guest boots, the firewall is active
    before the network and before a listener ordered like the stack's units, and /models comes back."""
    stack = build_stack(group_data("testhost"))
    internal = next(port.number for port, service in stack.port_map() if service.exposure == "internal")
    # A listener on all addresses, ordered as templates/etc/systemd/system/kca-service.service.j2 orders
    # the stack's units (After/Wants network-online.target, WantedBy multi-user.target).
    vm.ssh(
        f"printf '%s\\n' '[Unit]' 'After=network-online.target' 'Wants=network-online.target' "
        f"'[Service]' 'ExecStart=/usr/bin/python3 -m http.server {internal} --bind 0.0.0.0' "
        f"'[Install]' 'WantedBy=multi-user.target' > /etc/systemd/system/{PROBE_UNIT} && "
        f"systemctl daemon-reload && systemctl enable --now {PROBE_UNIT}"
    )
    vm.ssh(f"for i in $(seq 50); do ss -Htln | grep -q ':{internal} ' && exit 0; sleep 0.5; done; exit 1")
    uuid_before = vm.ssh(f"findmnt -n -o UUID {MOUNTPOINT}").strip()
    prober = Prober(vm.instance.guest_address, [internal], device=vm.instance.vm_link)
    prober.start()
    started = time.monotonic()
    reboot = subprocess.run([*TESTHOST, "reboot"], capture_output=True, text=True)
    back = time.monotonic()
    time.sleep(3)
    prober.finish()
    assert reboot.returncode == 0, reboot.stdout + reboot.stderr
    print(f"\n{reboot.stdout.strip()}")
    vm.timings["reboot to running (testhost reboot)"] = back - started

    opened = prober.opened(started)
    assert not opened, f"port {internal} answered from outside during the reboot: {opened[:5]}"
    assert prober.ssh_seen_after(started), "the probe never saw SSH: it could not have seen the internal port"
    print(f"probed port {internal} {prober.count()} times during the reboot: never reachable")

    def entered(unit: str, what: str = "ActiveEnterTimestampMonotonic") -> int:
        return int(vm.ssh(f"systemctl show -p {what} --value {unit}").strip())

    firewall = entered("kca-firewall.service")
    assert 0 < firewall < entered("systemd-networkd.service", "ExecMainStartTimestampMonotonic")
    assert firewall < entered(PROBE_UNIT, "ExecMainStartTimestampMonotonic")
    assert vm.ssh(f"nft list table inet {TABLE} >/dev/null && echo loaded").strip() == "loaded"
    assert vm.ssh(f"systemctl is-active {PROBE_UNIT}").strip() == "active"
    assert vm.ssh(f"findmnt -n -o UUID {MOUNTPOINT}").strip() == uuid_before
    assert vm.ssh("systemctl is-system-running").strip() == "running"
    vm.ssh(f"systemctl disable --now {PROBE_UNIT} && rm /etc/systemd/system/{PROBE_UNIT} && systemctl daemon-reload")


def test_reboot_with_the_models_disk_detached_comes_up_reachable(vm):
    """fstab's nofail,x-systemd.device-timeout= (models_filesystem.options) and RequiresMountsFor=/models
    (templates/etc/systemd/system/kca-service.service.j2) when the models disk is dead at boot: the host
    comes up reachable over SSH instead of in emergency mode, a unit that needs the disk fails cleanly on
    the dependency, and the health table says /models is missing. The disk then comes back."""
    unit = "kca-needs-models.service"
    vm.ssh(
        f"printf '%s\\n' '[Unit]' 'RequiresMountsFor={MOUNTPOINT}' '[Service]' 'ExecStart=/bin/sleep infinity' "
        f"'[Install]' 'WantedBy=multi-user.target' > /etc/systemd/system/{unit} && "
        f"systemctl daemon-reload && systemctl enable --now {unit}"
    )
    serial = VM_DATA["models_disk_serials"]["files"]
    started = time.monotonic()
    reboot = subprocess.run([*TESTHOST, "reboot", "--detach", serial], capture_output=True, text=True)
    assert reboot.returncode == 0, reboot.stdout + reboot.stderr
    vm.timings["reboot with the models disk detached, to SSH"] = time.monotonic() - started
    print(f"\n{reboot.stdout.strip()}")
    state = vm.ssh("systemctl is-system-running", check=False).strip()
    assert state in ("running", "degraded"), f"the host came up {state!r} without its models disk"
    assert vm.ssh(f"findmnt -n {MOUNTPOINT}", check=False).strip() == "", "/models is mounted without its disk"
    assert vm.ssh(f"systemctl is-active {unit}", check=False).strip() != "active"
    assert "Dependency failed" in vm.ssh(f"journalctl -b --no-pager -u {unit}", check=False)
    health = subprocess.run(
        [sys.executable, "tools/health_check.py"], cwd=ROOT, capture_output=True, text=True, env=vm.environment()
    )
    assert f"{MOUNTPOINT} is not mounted" in health.stdout, health.stdout + health.stderr

    reboot = subprocess.run([*TESTHOST, "reboot", "--cold"], capture_output=True, text=True)
    assert reboot.returncode == 0, reboot.stdout + reboot.stderr
    assert vm.ssh(f"findmnt -n -o SOURCE {MOUNTPOINT}").strip(), "/models did not come back with its disk"
    assert vm.ssh(f"systemctl is-active {unit}").strip() == "active"
    vm.ssh(f"systemctl disable --now {unit} && rm /etc/systemd/system/{unit} && systemctl daemon-reload")


# ---- formatting an empty disk (last: it moves /models to another disk) ------------------------------


def move_models_off(vm) -> None:
    """Unmount /models and drop its fstab line, as on a host whose models disk is being replaced."""
    vm.ssh(f"umount {MOUNTPOINT} && sed -i '\\| {MOUNTPOINT} |d' /etc/fstab")


def test_empty_disk_with_format_empty_is_formatted_and_mounted_by_uuid(vm):
    """mount_models_filesystem: the format_empty branch (mkfs, fstab by UUID, mount)."""
    move_models_off(vm)
    run = vm.deploy("empty", format_empty=True)
    assert run.returncode == 0, run.output[-4000:]
    vm.timings["deploy that formats the empty disk"] = run.seconds
    uuid = vm.ssh(f"blkid -s UUID -o value {vm.device('empty')}").strip()
    assert uuid and vm.ssh(f"blkid -s TYPE -o value {vm.device('empty')}").strip() == "ext4"
    assert vm.ssh(f"findmnt -n -o UUID {MOUNTPOINT}").strip() == uuid
    assert f"UUID={uuid} {MOUNTPOINT} " in vm.ssh("cat /etc/fstab")


def test_partitioned_disk_is_refused_and_untouched_even_with_format_empty(vm):
    """mount_models_filesystem: a disk with a partition table but no filesystem is not empty."""
    move_models_off(vm)
    refused_unchanged(vm, "partitioned", "partition table", format_empty=True)
