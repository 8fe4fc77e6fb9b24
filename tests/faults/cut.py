"""Run on the target (python3 - CHECK TIMEOUT < cut.py): wait until the shell command CHECK succeeds
and prints something (the named point of the deploy is reached), then SIGKILL every process the
deploy's SSH sessions started, as a power cut or a dropped link would leave them: each process whose
parent is an sshd session process, and all their descendants, except this script's own session.
Daemons (dockerd, systemd and the services) are not the deploy's processes and keep running.

CHECK `stream:COMMAND` runs COMMAND once and cuts on its first line of output instead (a point a
stream announces as it happens, such as `docker events`).

Prints `CUT <what CHECK printed>` and the killed commands (one per line), or `TIMEOUT` (exit 3)."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        table[int(entry)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), name)
    return table


def ancestors(pid: int, table) -> set[int]:
    found = set()
    while pid in table and pid not in found:
        found.add(pid)
        pid = table[pid][0]
    return found


def deploy_processes(table) -> list[int]:
    mine = ancestors(os.getpid(), table)
    roots = [
        pid
        for pid, (parent, name) in table.items()
        if name != "sshd" and table.get(parent, (0, ""))[1] == "sshd" and pid not in mine
    ]
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


def main() -> int:
    check, timeout = sys.argv[1], float(sys.argv[2])
    deadline = time.monotonic() + timeout
    parent = os.getppid()
    if check.startswith("stream:"):
        return cut_on_first_line(check[len("stream:") :], timeout)
    while True:
        probe = subprocess.run(["sh", "-c", check], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip():
            break
        if time.monotonic() > deadline:
            print("TIMEOUT", flush=True)
            return 3
        if os.getppid() != parent:
            return 4  # the SSH session that started this is gone: never cut a later deploy
        time.sleep(0.05)
    return cut(probe.stdout)


def cut_on_first_line(command: str, timeout: float) -> int:
    """A point that a stream announces (docker events): cut on its first line, without polling."""
    stream = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, text=True, start_new_session=True)
    parent, deadline = os.getppid(), time.monotonic() + timeout

    def watchdog() -> None:
        # Ends the stream at the deadline, or when the SSH session that started this is gone: never
        # cut a later deploy.
        while stream.poll() is None:
            if time.monotonic() > deadline or os.getppid() != parent:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(stream.pid, signal.SIGKILL)
            time.sleep(0.2)

    threading.Thread(target=watchdog, daemon=True).start()
    line = stream.stdout.readline()
    if not line:
        print("TIMEOUT", flush=True)
        return 3
    code = cut(line)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(stream.pid, signal.SIGKILL)
    return code


def cut(seen: str) -> int:
    # Frozen first (one pass, no /proc reads between the signals), then killed: a process cannot take
    # one more step between the point and the cut.
    for pid in deploy_processes(processes()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    killed: dict[int, str] = {}
    # Twice: a process forked while the first round ran is caught by the second.
    for _ in range(2):
        for pid in deploy_processes(processes()):
            if pid in killed:
                continue  # killed already, not yet reaped
            cmd = command_of(pid)
            try:
                os.kill(pid, signal.SIGKILL)
                killed[pid] = cmd
            except ProcessLookupError:
                pass
    print("CUT " + seen.strip().replace("\n", " | "), flush=True)
    for cmd in killed.values():
        print(f"killed: {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
