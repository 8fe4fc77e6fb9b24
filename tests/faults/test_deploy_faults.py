"""Fault rows on the deployed test host: the real deploy is cut at a named point (conftest.Target.
cut_deploy: pyinfra and everything its SSH sessions run on the host SIGKILLed at once), then run again.
Each row checks that the interrupted step left nothing that passes for done, that data that existed
is unchanged, that the re-run completes the step with a whole, verified product, and that one more
deploy changes nothing.

Each row starts from a converged host and prepares the point the way an operator's change would
reach it (a stamp removed, a package or a container gone, a secret missing), so that the real step
runs: the real secret generator, cmake and the compiler, pip, docker compose. No hook in the deploy:
each point is recognised on the host from outside (a file appearing, a compiler or pip process, a
container created). Destructive while it runs: use the test host, never a server in use."""

from __future__ import annotations

import hashlib
import shlex
import time
from pathlib import Path

from faultlib import changed

from tasks.llama_cpp import build_id, layout

# Prints, for each path given, "absent", "whole" or "partial <why>": never the value. A generated
# secret is the base64 of `bytes` random bytes less the characters tr drops (/, +, =, newline): about
# 4/3 * bytes characters, never fewer than `bytes` in practice, and nothing but letters and digits.
SECRET_STATE = """
import os, re, sys
for arg in sys.argv[1:]:
    path, size = arg.rsplit(":", 1)
    if not os.path.exists(path):
        print(path, "absent"); continue
    text = open(path).read()
    ok = re.fullmatch(r"[A-Za-z0-9]+", text) and len(text) >= int(size)
    print(path, "whole" if ok else f"partial ({len(text)} characters)")
"""

# Checks every file a package's RECORD lists against its recorded sha256; prints "whole N" or what
# is missing or different. Run with the venv's python: PACKAGE.
RECORD_CHECK = """
import base64, hashlib, os, sys
from importlib.metadata import distribution
dist = distribution(sys.argv[1])
bad, n = [], 0
for f in dist.files:
    if not f.hash:
        continue
    n += 1
    path = f.locate()
    if not os.path.exists(path):
        bad.append(f"missing {f}"); continue
    digest = base64.urlsafe_b64encode(hashlib.sha256(open(path, "rb").read()).digest()).rstrip(b"=").decode()
    if digest != f.hash.value:
        bad.append(f"differs {f}")
print(f"whole {n}" if not bad else "; ".join(bad[:5]))
"""


def active_units(target, units: list[str]) -> list[str]:
    out = target.run(f"systemctl is-active {' '.join(units)} || true", check=False).split()
    return [u for u, state in zip(units, out, strict=False) if state == "active"]


def wait_active(target, units: list[str], seconds: float = 180) -> list[str]:
    """The units of `units` not active after `seconds` (empty when all are)."""
    deadline = time.monotonic() + seconds
    while True:
        down = [u for u in units if u not in active_units(target, units)]
        if not down or time.monotonic() > deadline:
            return down
        time.sleep(3)


def test_cut_during_secret_generation(target, stack, row):
    entry = row(
        "during secret generation",
        "two secrets removed, a 3-byte .tmp left beside the second (a write cut off mid-way); the deploy is "
        "cut as soon as the first of them is written again, with the second still to come",
        "at the cut each secret is absent or whole and no other changed; the re-run makes the missing one, "
        "keeps the one made before the cut byte for byte, never takes the .tmp as a secret",
    )
    folder = stack.paths["secrets"]
    # Dify's secrets: Dify does not run on the test host, so no service restarts for them.
    first, second = [name for name in stack.secrets if name.startswith("dify-")][-2:]
    paths = {name: f"{folder}/{name}" for name in (first, second)}
    others = " ".join(shlex.quote(f"{folder}/{n}") for n in stack.secrets if n not in paths)
    others_before = target.digest(others)
    assert others_before.count("\n") + 1 == len(stack.secrets) - 2, "not every secret exists before the row"

    def states() -> dict[str, str]:
        args = " ".join(f"{paths[n]}:{stack.secrets[n].bytes}" for n in paths)
        out = target.run(f"python3 -c {shlex.quote(SECRET_STATE)} {args}")
        return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()}

    target.run(f"rm -f {paths[first]} {paths[second]} && printf abc > {paths[second]}.tmp")
    target.cut_deploy("secrets", f"test -e {paths[first]} && echo {first} written", timeout=300)

    at_cut = states()
    entry.seen = f"at the cut: {first} {at_cut[paths[first]]}, {second} {at_cut[paths[second]]}"
    assert all(state in ("absent", "whole") for state in at_cut.values()), at_cut
    assert at_cut[paths[first]] == "whole", at_cut
    assert target.digest(others) == others_before, "a secret that existed changed"
    first_at_cut = target.digest(paths[first])

    target.deploy("secrets-rerun")
    assert set(states().values()) == {"whole"}
    assert target.digest(paths[first]) == first_at_cut, f"{first} was generated again"
    assert target.digest(others) == others_before, "a secret that existed changed"
    assert target.run(f"ls {folder}").split().count(f"{second}.tmp") == 0
    target.deploy_expecting_no_change("secrets-again")


def test_cut_mid_llama_cpp_build(target, stack, row):
    entry = row(
        "mid llama.cpp build",
        "the build stamp removed (as a changed flag or pin would); the deploy is cut while the compiler "
        "runs, with 20 or more objects built",
        "at the cut no stamp and the installed llama-server untouched (the services keep running it); "
        "the re-run builds from a fresh build folder, installs, writes the stamp of this source and these "
        "flags; llama-server runs",
    )
    where = layout(stack)
    binary = f"{where['bin']}/llama-server"
    units = [s.unit for s in stack.services_of_kind("llama.cpp")]
    running = active_units(target, units)
    binary_before = target.digest(binary)
    assert binary_before, "no llama-server before the row"

    target.run(f"rm -f {where['build_id']}")
    compiling = (
        "pgrep -x 'cc1plus|cc1|ccache' >/dev/null && "
        f"[ $(find {where['build']} -name '*.o' 2>/dev/null | wc -l) -ge 20 ] && echo compiling"
    )
    target.cut_deploy("llama-build", compiling, timeout=900)
    objects = target.run(f"find {where['build']} -name '*.o' | wc -l")
    entry.seen = f"{objects} objects built at the cut"

    assert target.run(f"cat {where['build_id']} 2>/dev/null || true", check=False) == "", "stamp written early"
    assert target.digest(binary) == binary_before, "the installed binary changed before the build finished"
    assert active_units(target, running) == running, "a llama.cpp service stopped at the cut"

    results = target.deploy("llama-build-rerun")
    # The operation's own name, under whatever deploys it is nested in ("LLM services | llama.cpp | ...").
    assert any(name.split(" | ")[-1].startswith("Build llama.cpp") for name in changed(results))
    assert target.run(f"cat {where['build_id']}") == build_id(stack)
    assert "version" in target.run(f"{binary} --version 2>&1", check=False)
    assert wait_active(target, running) == []
    target.deploy_expecting_no_change("llama-build-again")


def test_cut_mid_venv_install(target, stack, row):
    venv = stack.venvs["main"]
    lock = Path(venv.lock)
    stamp = f"{venv.path}/.kca-{lock.stem}.sha256"
    entry = row(
        "mid venv install",
        f"transformers uninstalled from {venv.path} and its install stamp removed; the deploy is cut while "
        "pip writes transformers' files (200 or more on disk)",
        "at the cut no stamp; the re-run installs the hashed lock again, every file of transformers' "
        "RECORD is present with its recorded sha256, it imports, the services that use the venv run",
    )
    python = f"{venv.path}/bin/python"
    site = target.run(f"{python} -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'")
    users = [s.unit for s in stack.services_of_kind("fastapi") if getattr(s.settings, "venv", None) == "main"]
    running = active_units(target, users)
    target.run(f"{venv.path}/bin/pip uninstall -y -q transformers && rm -f {stamp}")
    writing = (
        # [b]: the pattern does not match the probe's own shell, whose command line holds it.
        "pgrep -f '[b]in/pip install' >/dev/null && "
        f"[ $(find {site}/transformers -type f 2>/dev/null | head -n 200 | wc -l) -ge 200 ] && echo pip writing"
    )
    target.cut_deploy("venv", writing, timeout=900)
    files = target.run(f"find {site}/transformers -type f | wc -l")
    record = target.run(f"ls {site}/transformers-*.dist-info/RECORD 2>/dev/null | wc -l", check=False)
    entry.seen = f"{files} files of transformers on disk at the cut, {'a' if record == '1' else 'no'} RECORD"

    assert target.run(f"cat {stamp} 2>/dev/null || true", check=False) == "", "stamp written early"

    target.deploy("venv-rerun")
    assert target.run(f"cat {stamp}") == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert target.run(f"{python} -c {shlex.quote(RECORD_CHECK)} transformers").startswith("whole ")
    target.run(f"{python} -c 'import transformers'")
    assert wait_active(target, running) == []
    target.deploy_expecting_no_change("venv-again")


def test_cut_after_half_of_a_compose_project_started(target, stack, row):
    webui = stack.services[stack.openwebui["service"]]
    project, folder = webui.compose_project, stack.paths["openwebui"]
    entry = row(
        "after half of a compose project started",
        f"the {project} project's container removed (its data folder stays) and created again, not started, "
        "by `docker compose create` (what a cut between compose's create and start leaves: from outside, "
        "the millisecond between the two cannot be hit); then the deploy is cut as soon as compose starts "
        "it (docker events), while `up --wait` waits for its health",
        "kca-compose-state says pending for the created container; the deploy starts it; after the cut the "
        "re-run converges the project, the container becomes healthy, the accounts in its database are all "
        "there",
    )
    label = f"label=com.docker.compose.project={project}"
    users_sql = (
        "import sqlite3; "
        "print(sqlite3.connect('/app/backend/data/webui.db').execute('select id from user order by id').fetchall())"
    )
    compose_state = f"cd {folder} && /usr/local/sbin/kca-compose-state {project} -f docker-compose.yml"

    def accounts() -> str:
        container = target.run(f"docker ps -q --filter {label}")
        return target.run(f"docker exec {container} python3 -c {shlex.quote(users_sql)}")

    def container_state() -> str:
        return target.run(f"docker ps -a --filter {label} --format '{{{{.State}}}} {{{{.Status}}}}'")

    accounts_before = accounts()
    target.run(f"docker rm -f $(docker ps -aq --filter {label})")
    target.run(f"cd {folder} && docker compose -p {project} -f docker-compose.yml create --quiet-pull 2>&1")
    prepared = container_state()
    assert prepared.startswith("created"), prepared
    assert target.run(compose_state).startswith("pending"), "a created, not started container looks converged"

    started = (
        "stream:docker events --filter type=container --filter event=start "
        f"--filter {label} --format '{{{{.Actor.ID}}}}'"
    )
    target.cut_deploy("compose", started, timeout=600)
    at_cut = container_state()
    entry.seen = f"prepared: created, pending; at the cut: {at_cut}, {target.run(compose_state).split(':')[0]}"

    target.deploy("compose-rerun")
    deadline = time.monotonic() + 240
    while "(healthy)" not in (status := container_state()) and time.monotonic() < deadline:
        time.sleep(5)
    assert "(healthy)" in status, status
    assert accounts() == accounts_before, "Open WebUI's accounts changed"
    target.deploy_expecting_no_change("compose-again")
