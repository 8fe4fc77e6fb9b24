"""Operations that know when they are done.

Each reads the host's state inside the operation, when it runs (a fact), and does nothing, with a
`host.noop`, when the host already is as asked: as pyinfra's own `files` operations do. So a step that
depends on an earlier one sees the host after that step, a re-run of a converged host sends nothing but
the facts, and an operation's name never depends on what the host holds.

Several take a whole set (files, directories, units, packages) and read it with one command: a no-change
deploy costs one round trip per set rather than one or two per item.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pyinfra import host, state
from pyinfra.api import FactBase, FileUploadCommand, FunctionCommand, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.exceptions import OperationError

from .render import json_text, render
from .util import sha256_of

# ---------------------------------------------------------------------------------------------------
# Facts


class ShellTest(FactBase[bool]):
    """Whether a shell test succeeds on the host (its output is ignored)."""

    def command(self, test: str) -> str:
        return f"if {{ {test} ; }} >/dev/null 2>&1; then echo yes; else echo no; fi"

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[-1].strip() == "yes"


class JsonFile(FactBase):
    """A JSON file's content, None when it is missing or empty."""

    def command(self, path: str) -> str:
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output: list[str]):
        text = "\n".join(output).strip()
        return json.loads(text) if text else None


class FileStates(FactBase[list]):
    """For each path, in order: None when it is not a regular file, else (mode, user, group, size,
    mtime, sha256). The paths in `quick` get '-' for their sha256: they are compared by size and mtime."""

    default = list

    def command(self, paths: Sequence[str], quick: Sequence[str] = ()) -> str:
        one = (
            'f() { if [ -f "$1" ] && [ ! -L "$1" ]; then printf \'%s %s\\n\' "$(stat -c \'%a %U %G %s %Y\' -- "$1")" '
            '"$(if [ "$2" = q ]; then echo -; else sha256sum < "$1" | cut -c1-64; fi)"; else echo -; fi; }'
        )
        calls = "; ".join(f"f {shlex.quote(p)} {'q' if p in quick else 's'}" for p in paths)
        return f"{one}; {calls}"

    def process(self, output: list[str]) -> list:
        return [None if line.strip() == "-" else tuple(line.split()) for line in output]


class DirectoryStates(FactBase[list]):
    """For each path, in order: None when it does not exist, else (type, mode, user, group)."""

    default = list

    def command(self, paths: Sequence[str]) -> str:
        quoted = " ".join(shlex.quote(p) for p in paths)
        # %F is the type in words ("directory", "regular file"): its spaces become dashes.
        return (
            f'for p in {quoted}; do if [ -e "$p" ] || [ -L "$p" ]; then '
            "stat -c '%F|%a|%U|%G' -- \"$p\" | tr ' |' '- '; else echo -; fi; done"
        )

    def process(self, output: list[str]) -> list:
        return [None if line.strip() == "-" else tuple(line.split()) for line in output]


class UnitStates(FactBase[dict]):
    """For each systemd unit: (enabled, running), as pyinfra's SystemdEnabled and SystemdStatus read them."""

    default = dict

    def command(self, units: Sequence[str]) -> str:
        quoted = " ".join(shlex.quote(u) for u in units)
        return f"systemctl show --property Id --property UnitFileState --property SubState -- {quoted}"

    def process(self, output: list[str]) -> dict:
        found: dict[str, tuple[bool, bool]] = {}
        current: dict[str, str] = {}
        for line in [*output, ""]:
            if "=" in line:
                key, value = line.strip().split("=", 1)
                current[key] = value
                continue
            if current.get("Id"):
                found[current["Id"]] = (
                    current.get("UnitFileState") in ("enabled", "static"),
                    current.get("SubState") in ("running", "waiting", "exited", "listening", "mounted"),
                )
            current = {}
        return found


class PackageVersions(FactBase[dict]):
    """The installed version of each named Debian package that is installed (others are absent)."""

    default = dict

    def command(self, packages: Sequence[str]) -> str:
        quoted = " ".join(shlex.quote(p) for p in packages)
        return f"dpkg-query -W -f='${{db:Status-Abbrev}} ${{Package}} ${{Version}}\\n' -- {quoted} 2>/dev/null || true"

    def process(self, output: list[str]) -> dict:
        versions = {}
        for line in output:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ii":
                versions[parts[1]] = parts[2]
        return versions


# ---------------------------------------------------------------------------------------------------
# Helpers the operations share


def changed(ops: Iterable) -> bool:
    """Whether any of `ops` (earlier operations; None is skipped) changed the host. Read when the
    operation runs; while pyinfra only plans (a run without -y), what they would change."""
    ops = [op for op in ops if op is not None]
    if state.is_executing:
        return any(op.did_change() for op in ops)
    return any(op.will_change for op in ops)


def _connector_arguments() -> dict:
    """The connector arguments of the running operation (sudo, the user, the environment), for a
    command the operation sends itself: what pyinfra passes to its own commands. (pyinfra's files.put
    reads `current_op_global_arguments` the same way, for _temp_dir.)"""
    arguments = host.current_op_global_arguments or {}
    return {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}


def _run_printing_output(state, host, command: str, arguments: dict) -> bool:
    """Run `command` with its output printed as it comes: long builds and downloads show their progress
    instead of hanging silently. pyinfra prints a command's output only at -vvv, and then for every
    command and fact; this is the supported way to do it for one: a FunctionCommand callback (as
    python.call runs) calling `host.run_shell_command` with the connector's `print_output`. pyinfra is
    pinned to one version in pyproject.toml and the lock all the same."""
    status, _ = host.run_shell_command(
        StringCommand(command), print_output=True, print_input=state.print_input, **arguments
    )
    return status


def shell_commands(commands: Sequence[str], stream: bool):
    """Yield `commands` as pyinfra runs them, or printing their output as it comes (`stream`)."""
    if not stream:
        yield from commands
        return
    arguments = _connector_arguments()
    for command in commands:
        yield FunctionCommand(_run_printing_output, (command, arguments), {})


_LOCAL_SUMS: dict[tuple[str, int, int], str] = {}


def local_sha256(path: str | os.PathLike) -> str:
    """A local file's sha256, computed once per version of the file (size and mtime) in a run: the
    large files (a stand-in model) are uploaded to several paths."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _LOCAL_SUMS:
        _LOCAL_SUMS[key] = sha256_of(Path(path))
    return _LOCAL_SUMS[key]


def stat_test(paths: Sequence[str], wanted: str) -> str:
    """A shell test: every path exists with `wanted` as stat prints '%a %U %G' (`600 root root`)."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    # stat fails when one is missing; a line other than `wanted` is one to fix.
    return f"found=$(stat -c '%a %U %G' -- {quoted}) && ! printf '%s\\n' \"$found\" | grep -vqx {shlex.quote(wanted)}"


# ---------------------------------------------------------------------------------------------------
# Shell steps guarded by the host's state


@operation()
def shell_unless(done: str, commands: list[str], triggers: Sequence = (), stream: bool = False):
    """Run `commands` unless the shell test `done` succeeds on the host, or again when one of
    `triggers` (earlier operations) changed the host. `stream`: print their output as it comes (long
    builds, downloads). pyinfra's `_sudo_user` applies to the test and the commands alike."""
    if not changed(triggers) and host.get_fact(ShellTest, test=done):
        host.noop("the host passes the test: nothing to do")
        return
    yield from shell_commands(commands, stream)


@operation()
def stamped(stamp: str, wanted: str, commands: list[str], uploads: Sequence[HostFile] = (), stream: bool = False):
    """Upload `uploads`, run `commands`, then write `wanted` into the file `stamp`, unless `stamp`
    already holds it: a step that cannot tell by itself whether it changed anything (pip install, a
    build) runs once per `wanted` (a digest of what it was asked, `uploads` included)."""
    test = f'[ "$(cat {shlex.quote(stamp)} 2>/dev/null)" = {shlex.quote(wanted)} ]'
    if host.get_fact(ShellTest, test=test):
        host.noop(f"{stamp} says {wanted}")
        return
    for spec in uploads:
        yield from _upload(spec)
    yield from shell_commands([*commands, f"echo {shlex.quote(wanted)} > {shlex.quote(stamp)}"], stream)


# ---------------------------------------------------------------------------------------------------
# Files, directories, units, packages: each a whole set, read with one command


@dataclass(frozen=True)
class HostFile:
    """One file the deploy writes: its bytes (`text`/`data`) or a local file (`src`), owner and mode."""

    dest: str
    src: str | os.PathLike | None = None
    text: str | None = None
    data: bytes | None = None
    mode: str = "0644"
    user: str = "root"
    group: str = "root"

    def content(self):
        if self.src is not None:
            return str(self.src)
        return BytesIO(self.data if self.data is not None else (self.text or "").encode())

    def sha256(self) -> str:
        if self.src is not None:
            return local_sha256(self.src)
        return hashlib.sha256(self.data if self.data is not None else (self.text or "").encode()).hexdigest()

    @property
    def quick(self) -> bool:
        """A large local file (a stand-in model, a pinned archive: verified by sha256 on this machine)
        is compared by size and modification time, as rsync does, and its upload is given the local
        file's mtime: reading hundreds of MB on the host at every run is most of a no-change deploy."""
        return self.src is not None and os.path.getsize(self.src) >= QUICK_CHECK_BYTES

    def same_as(self, have: tuple) -> bool:
        """Whether the file found (FileStates) holds this content."""
        if self.quick:
            stat = os.stat(self.src)
            return (have[3], have[4]) == (str(stat.st_size), str(int(stat.st_mtime)))
        return have[5] == self.sha256()


QUICK_CHECK_BYTES = 8 << 20


def _owner_commands(path: str, user: str | None, group: str | None, mode: str | None, found) -> list[str]:
    """chown/chmod for what differs from `found` (mode, user, group as stat prints them)."""
    commands = []
    have_mode, have_user, have_group = found if found else (None, None, None)
    if (user and user != have_user) or (group and group != have_group):
        owner = f"{user or ''}:{group or ''}".rstrip(":") if user else f":{group}"
        commands.append(f"chown {shlex.quote(owner)} {shlex.quote(path)}")
    if mode and (have_mode is None or int(have_mode, 8) != int(mode, 8)):
        commands.append(f"chmod {mode} {shlex.quote(path)}")
    return commands


def template(template: str, dest: str, mode: str = "0644", user: str = "root", group: str = "root", **context):
    """A file rendered from a template of this repository: root's unless told otherwise."""
    return HostFile(dest=dest, text=render(template, **context), mode=mode, user=user, group=group)


def json_file(data, dest: str, mode: str = "0644", user: str = "root", group: str = "root") -> HostFile:
    """A JSON file with sorted keys: the same data writes the same bytes."""
    return HostFile(dest=dest, text=json_text(data), mode=mode, user=user, group=group)


def _upload(spec: HostFile):
    yield f"mkdir -p {shlex.quote(os.path.dirname(spec.dest))}"
    yield FileUploadCommand(spec.content(), spec.dest, remote_temp_filename=host.get_temp_filename(spec.dest))
    if spec.quick:
        yield f"touch -m -d @{int(os.stat(spec.src).st_mtime)} {shlex.quote(spec.dest)}"
    yield from _owner_commands(spec.dest, spec.user, spec.group, spec.mode, None)


@operation()
def install_files(files: Sequence[HostFile]):
    """Make each file hold its content, owner and mode; upload only what differs."""
    found = host.get_fact(FileStates, paths=[f.dest for f in files], quick=[f.dest for f in files if f.quick])
    pending = 0
    for spec, have in zip(files, found, strict=True):
        if have is None or not spec.same_as(have):
            pending += 1
            yield from _upload(spec)
            continue
        commands = _owner_commands(spec.dest, spec.user, spec.group, spec.mode, have[:3])
        pending += bool(commands)
        yield from commands
    if not pending:
        host.noop(f"{len(files)} file(s) are current")


@dataclass(frozen=True)
class HostDirectory:
    """A directory; a None owner or mode is left as found (only created)."""

    path: str
    user: str | None = None
    group: str | None = None
    mode: str | None = None


@operation()
def directories(dirs: Sequence[HostDirectory]):
    """Create each directory (parents first, as listed) and give it its owner and mode."""
    found = host.get_fact(DirectoryStates, paths=[d.path for d in dirs])
    pending = 0
    for spec, have in zip(dirs, found, strict=True):
        if have is not None and have[0] != "directory":
            raise OperationError(f"{spec.path} exists and is a {have[0].replace('-', ' ')}, not a directory")
        if have is None:
            pending += 1
            yield f"mkdir -p {shlex.quote(spec.path)}"
        commands = _owner_commands(spec.path, spec.user, spec.group, spec.mode, have[1:] if have else None)
        pending += bool(commands)
        yield from commands
    if not pending:
        host.noop(f"{len(dirs)} directories are current")


@operation()
def units_running(units: Sequence[tuple[str, bool | None, bool | None]]):
    """For each (unit, enabled, running): start or stop it, enable or disable it (None: leave it)."""
    found = host.get_fact(UnitStates, units=[u for u, _, _ in units])
    pending = 0
    for unit, enabled, running in units:
        is_enabled, is_running = found.get(unit, (False, False))
        if running is not None and running != is_running:
            pending += 1
            yield f"systemctl {'start' if running else 'stop'} {shlex.quote(unit)}"
        if enabled is not None and enabled != is_enabled:
            pending += 1
            yield f"systemctl {'enable' if enabled else 'disable'} {shlex.quote(unit)}"
    if not pending:
        host.noop(f"{len(units)} unit(s) are as asked")


@operation()
def packages(packages: Sequence[str], update: bool = True, no_recommends: bool = True, allow_downgrades: bool = False):
    """Install the Debian packages (`name` or `name=version`) that are missing or at another version.
    The index is refreshed first (`update`) only when something is to be installed: a converged host
    stays quiet, and one dpkg-query of the named packages is all it costs."""
    wanted = [p.split("=", 1) if "=" in p else (p, None) for p in packages]
    installed = host.get_fact(PackageVersions, packages=[name for name, _ in wanted])
    missing = [
        spec
        for spec, (name, version) in zip(packages, wanted, strict=True)
        if name not in installed or (version is not None and installed[name] != version)
    ]
    if not missing:
        host.noop(f"{len(packages)} package(s) are installed")
        return
    env = "DEBIAN_FRONTEND=noninteractive"
    # Waits for a lock another apt holds (unattended-upgrades at boot) rather than fail at once.
    options = "-y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
    if update:
        yield f"{env} apt-get -o DPkg::Lock::Timeout=600 update -qq"
    flags = (" --no-install-recommends" if no_recommends else "") + (" --allow-downgrades" if allow_downgrades else "")
    yield f"{env} apt-get {options}{flags} install {' '.join(shlex.quote(p) for p in missing)}"


class Passwd(FactBase[dict]):
    """Every account of the host: {name: {"uid": uid}} (`getent passwd`, one short read)."""

    default = dict

    def command(self) -> str:
        return "getent passwd"

    def process(self, output: list[str]) -> dict:
        return {f[0]: {"uid": int(f[2])} for f in (line.split(":") for line in output) if len(f) >= 3}


class AccountStates(FactBase[dict]):
    """For each name: ({uid, gid, home, shell} or None, its group's gid or None)."""

    default = dict

    def command(self, names: Sequence[str]) -> str:
        quoted = " ".join(shlex.quote(n) for n in names)
        return f'for n in {quoted}; do getent passwd "$n" || echo "$n:-"; getent group "$n" || echo "$n:-"; done'

    def process(self, output: list[str]) -> dict:
        found = {}
        for user_line, group_line in zip(output[::2], output[1::2], strict=True):
            user, group = user_line.split(":"), group_line.split(":")
            found[user[0]] = (
                {"uid": int(user[2]), "gid": int(user[3]), "home": user[5], "shell": user[6]}
                if len(user) >= 7
                else None,
                int(group[2]) if len(group) >= 3 else None,
            )
        return found


@dataclass(frozen=True)
class Account:
    """A user with a group of its own name (and of its id, where the data fixes one)."""

    name: str
    uid: int | None
    home: str
    shell: str
    system: bool = False
    create_home: bool = False


@operation()
def accounts(wanted: Sequence[Account]):
    """Create each account and its group, or set its home, shell and group. An account found with
    another id is not renumbered here: the deploy refuses that before its first operation."""
    found = host.get_fact(AccountStates, names=[a.name for a in wanted])
    pending = 0
    for account in wanted:
        user, gid = found[account.name]
        name = shlex.quote(account.name)
        system = " --system" if account.system else ""
        if gid is None:
            pending += 1
            yield f"groupadd{system}{f' --gid {account.uid}' if account.uid is not None else ''} {name}"
        if user is None:
            pending += 1
            home = "--create-home" if account.create_home else "--no-create-home"
            uid = f" --uid {account.uid}" if account.uid is not None else ""
            yield (
                f"useradd{system}{uid} --gid {name} --home-dir {shlex.quote(account.home)} {home} "
                f"--shell {shlex.quote(account.shell)} {name}"
            )
            continue
        if (user["home"], user["shell"]) != (account.home, account.shell) or (gid is not None and user["gid"] != gid):
            pending += 1
            yield (
                f"usermod --gid {name} --home {shlex.quote(account.home)} --shell {shlex.quote(account.shell)} {name}"
            )
    if not pending:
        host.noop(f"{len(wanted)} account(s) are as asked")
