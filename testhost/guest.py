"""What both backends share once a guest is booting: the SSH key and config, the host end of the guest's
link (address, forwarding, masquerade), waiting until the guest is ready, and the self-test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .contract import PREFIX_LENGTH, Instance
from .util import TesthostError, log, quiet, run

SSH_WAIT_S = 90  # boot to sshd: 1-3 s in a container, about 20 s in a VM under TCG
READY_WAIT_S = 300  # systemctl is-system-running --wait


def ensure_client_key(instance: Instance) -> None:
    ssh_dir = instance.ssh_key.parent
    ssh_dir.mkdir(parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    if not instance.ssh_key.exists():
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"testhost@{socket.gethostname()}",
                "-f",
                instance.ssh_key,
            ]
        )
    instance.ssh_config.write_text(
        f"# written by testhost: ssh -F {instance.ssh_config} {instance.machine}\n"
        f"Host {instance.machine}\n"
        f"    HostName {instance.guest_address}\n"
        "    User root\n"
        f"    IdentityFile {instance.ssh_key}\n"
        "    IdentitiesOnly yes\n"
        "    StrictHostKeyChecking no\n"
        "    UserKnownHostsFile /dev/null\n"
        "    LogLevel ERROR\n"
    )


def ssh_command(instance: Instance, *command: str, connect_timeout: int = 3) -> list[str]:
    return [
        "ssh",
        "-F",
        str(instance.ssh_config),
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={connect_timeout}",
        instance.machine,
        *command,
    ]


def ssh_output(instance: Instance, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(ssh_command(instance, command), capture_output=True, text=True, timeout=timeout)


def ask(instance: Instance, command: str, tries: int = 5) -> None:
    """Run a command that ends the guest's SSH session (reboot, poweroff): its exit status says nothing,
    but a connection that never opened (ssh's 255 before the command ran) is tried again."""
    for _ in range(tries):
        try:
            done = subprocess.run(ssh_command(instance, command, connect_timeout=10), capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            return
        if done.returncode != 255 or b"closed by remote host" in done.stderr:
            return
        time.sleep(2)
    raise TesthostError(f"could not ask the guest to run {command!r}: {done.stderr.decode(errors='replace')[-300:]}")


def answers(instance: Instance) -> bool:
    if not instance.ssh_config.is_file():
        return False
    try:
        return subprocess.run(ssh_command(instance, "true"), capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# ---- the host end of the guest's link --------------------------------------------------------------


def link_exists(link: str) -> bool:
    return quiet(["ip", "link", "show", link])


def configure_host_link(instance: Instance, link: str) -> None:
    run(["ip", "addr", "replace", f"{instance.host_address}/{PREFIX_LENGTH}", "dev", link])
    run(["ip", "link", "set", link, "up"])
    run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    # "table; delete table; table {...}" replaces any leftover table in one transaction.
    table = instance.nft_table
    ruleset = (
        f"table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        f'        ip saddr {instance.subnet} oifname != "{link}" masquerade\n'
        "    }\n}\n"
    )
    run(["nft", "-f", "-"], input=ruleset.encode())


def nft_table_present(instance: Instance) -> bool:
    # Without nft on this machine (a fresh one, before `up` installs the host packages) no run of
    # this tool can have made the table.
    return shutil.which("nft") is not None and quiet(["nft", "list", "table", "ip", instance.nft_table])


def teardown_host_network(instance: Instance, link: str) -> None:
    if nft_table_present(instance):
        run(["nft", "delete", "table", "ip", instance.nft_table])
    if link_exists(link):
        quiet(["ip", "link", "delete", link])


# ---- readiness ------------------------------------------------------------------------------------


def wait_for_ssh(instance: Instance, still_booting, timeout: float = SSH_WAIT_S) -> None:
    """Until SSH answers; `still_booting()` raises when the guest's process died."""
    log(f"waiting for SSH on {instance.guest_address}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        still_booting()
        if answers(instance):
            return
        time.sleep(0.5)
    raise TesthostError(f"no SSH on {instance.guest_address} after {timeout:.0f} s")


def boot_id(instance: Instance) -> str:
    """The guest kernel's boot id: a new one proves that a reboot really happened."""
    return ssh_output(instance, "cat /proc/sys/kernel/random/boot_id", timeout=30).stdout.strip()


def wait_for_new_boot(instance: Instance, previous: str, still_booting, timeout: float) -> None:
    """Until SSH answers from a boot other than `previous` (the old one may answer for a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        still_booting()
        if answers(instance) and boot_id(instance) not in ("", previous):
            return
        time.sleep(0.5)
    raise TesthostError(f"the guest did not come back from the reboot within {timeout:.0f} s")


def wait_until_running(instance: Instance) -> str:
    """systemd's verdict once boot is over: running or degraded (failed units are listed)."""
    try:
        state = ssh_output(instance, "systemctl is-system-running --wait", timeout=READY_WAIT_S).stdout.strip()
    except subprocess.TimeoutExpired:
        state = ""
    if state == "degraded":
        log("guest is degraded; failed units:")
        failed = ssh_output(instance, "systemctl --failed --no-legend --plain").stdout
        print(failed, end="", file=sys.stderr)
    elif state != "running":
        raise TesthostError(f"systemctl is-system-running said '{state or 'nothing'}'")
    return state


# ---- selftest -------------------------------------------------------------------------------------

# Every index the guest's pip.conf names (or PyPI, when it names no index-url) must answer, and every
# local path it names must exist in the guest. Runs in the guest.
PIP_CHECK = r"""set -u
conf=/etc/pip.conf; fails=0
keys="index-url|extra-index-url|find-links"
urls=$(sed -nE "s/^($keys)[[:space:]]*=[[:space:]]*//p" "$conf" 2>/dev/null | tr " " "\n")
grep -Eq "^index-url[[:space:]]*=" "$conf" 2>/dev/null || urls="https://pypi.org/simple/
$urls"
verdict() {  # verdict OK|FAIL WHAT
    echo "$1 $2"
    [ "$1" = "ok  " ] || fails=$((fails + 1))
}
for u in $urls; do
    case $u in
        http://*|https://*)
            code=$(curl -sS -o /dev/null -I -m 20 -w "%{http_code}" "$u") || code=ERR
            case $code in
                2??|3??) verdict "ok  " "pip index $u -> $code" ;;
                *) verdict FAIL "pip index $u -> $code" ;;
            esac ;;
        file://*|/*)
            p=${u#file://}
            if [ -e "$p" ]; then verdict "ok  " "pip path $p"; else verdict FAIL "pip path $p missing"; fi ;;
    esac
done
exit $fails"""


def selftest(instance: Instance) -> None:
    """The guest can do what the deploy needs of it: systemd up, apt index, pip indexes."""
    if not answers(instance):
        raise TesthostError("guest not running or not answering SSH; run 'testhost up'")
    fails = 0
    state = ssh_output(instance, "systemctl is-system-running").stdout.strip()
    if state in ("running", "degraded"):
        log(f"ok   systemd: {state}")
    else:
        log(f"FAIL systemd: {state or 'no answer'}")
        fails += 1
    started = time.monotonic()
    if ssh_output(instance, "apt-get update -q >/tmp/testhost-apt.log 2>&1", timeout=300).returncode == 0:
        log(f"ok   apt-get update ({time.monotonic() - started:.1f} s)")
    else:
        log("FAIL apt-get update:")
        log(ssh_output(instance, "tail -n 15 /tmp/testhost-apt.log").stdout)
        fails += 1
    pip = ssh_output(instance, PIP_CHECK, timeout=300)
    for line in pip.stdout.splitlines():
        log(line)
    if pip.returncode != 0:
        fails += 1
    if fails:
        raise TesthostError(f"selftest: {fails} check(s) failed")
    log("selftest passed")


def remove_state_file(path: Path) -> None:
    path.unlink(missing_ok=True)
