"""Fixtures and the printed table of the fault-injection rows (the machinery is in faultlib.py)."""

from __future__ import annotations

import pytest
from faultlib import ELSEWHERE, TABLE, Row, Target


@pytest.fixture
def row(request):
    """Declare the test's row of the table: row(fault, injected, converged)."""

    def declare(fault: str, injected: str, converged: str) -> Row:
        TABLE[request.node.nodeid] = Row(fault, injected, converged)
        return TABLE[request.node.nodeid]

    return declare


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    entry = TABLE.get(item.nodeid)
    if entry is None:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        entry.result = "skipped" if report.skipped else report.outcome
        entry.seconds += report.duration
    elif report.when == "teardown":
        entry.seconds += report.duration
        if report.failed:
            entry.result = "failed (teardown)"


def pytest_terminal_summary(terminalreporter):
    if not TABLE:
        return
    write = terminalreporter.write_line
    write("")
    write("Fault-injection table")
    for entry in TABLE.values():
        write(f"- {entry.fault}: {entry.result} in {entry.seconds:.0f} s")
        write(f"    injected: {entry.injected}")
        write(f"    converged: {entry.converged}")
        if entry.seen:
            write(f"    seen: {entry.seen}")
    for fault, where in ELSEWHERE:
        write(f"- {fault}: proved in another stage by {where}")
    write(f"total: {sum(e.seconds for e in TABLE.values()):.0f} s")


@pytest.fixture(scope="session")
def target():
    from testhost import contract

    instance = contract.instance()
    if not instance.ssh_config.is_file():
        pytest.skip("no test host is up (testhost/testhost up, then a first deploy)")
    return Target(instance)
