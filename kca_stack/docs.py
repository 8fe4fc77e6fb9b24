"""Write docs/server.md from the stack: the design document, regenerated from the data it describes.

`python -m kca_stack.docs` writes the file; `--check` fails when the committed copy is out of date.
"""

from __future__ import annotations

import argparse
import sys

from .data import GROUP_DATA, group_data
from .load import build_stack
from .model import Stack

DOC_PATH = GROUP_DATA.parent / "docs" / "server.md"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _gb(value: float) -> str:
    return f"{value:g} GB" if value else "-"


def services_table(stack: Stack) -> str:
    rows = []
    for s in stack.services.values():
        ports = ", ".join(str(p.number) for p in s.ports) or "(none on the host)"
        runs_as = s.unit or f"compose project `{s.compose_project}`"
        rows.append(
            [
                f"`{s.name}`",
                s.title,
                s.kind,
                runs_as,
                ports,
                s.exposure,
                s.bind,
                s.gpu or "-",
                _gb(stack.service_vram_gb(s)),
                ", ".join(s.models) or "-",
                s.feature,
            ]
        )
    header = [
        "name",
        "service",
        "server",
        "unit / project",
        "host port",
        "exposure",
        "bind",
        "GPU",
        "VRAM",
        "models",
        "feature",
    ]
    return _table(header, rows)


def port_map(stack: Stack) -> str:
    rows = [
        [
            str(port.number),
            s.title,
            port.protocol,
            "yes" if s.exposure == "external" else "no",
            s.bind,
            s.feature,
        ]
        for port, s in stack.port_map()
    ]
    return _table(["port", "service", "protocol", "external", "bound to", "use"], rows)


def vram_table(stack: Stack) -> str:
    rows = []
    for scenario in stack.scenarios.values():
        parts = " + ".join(f"{name} {stack.service_vram_gb(stack.services[name]):g}" for name in scenario.services)
        boot = " (at boot)" if scenario.name == stack.gpu.boot_scenario else ""
        rows.append(
            [
                scenario.name + boot,
                scenario.title,
                parts,
                _gb(stack.scenario_vram_gb(scenario)),
                _gb(stack.scenario_headroom_gb(scenario)),
            ]
        )
    return _table(["scenario", "what holds the GPU", "services (GB)", "sum", "headroom"], rows)


def conflicts_table(stack: Stack) -> str:
    rows = [
        [
            f"`{s.unit}`",
            ", ".join(f"`{c.unit}`" for c in stack.conflicts_of(s)) or "-",
            "yes" if stack.starts_at_boot(s) else "no",
        ]
        for s in stack.systemd_services()
    ]
    return _table(["unit", "Conflicts= (cannot share the GPU)", "starts at boot"], rows)


CAPTURE_WORDS = {
    "sqlite-backup": "SQLite online backup API",
    "pg-dumpall": "pg_dumpall through the container",
    "stop-copy-start": "stop, copy, start",
    "copy": "copied as it is",
}


def state_table(stack: Stack) -> str:
    """What a rebuild cannot make again, and how each piece is captured and restored."""
    rows = []
    for item in stack.backup.state:
        filters = [f"only {', '.join(item.only)}"] if item.only else []
        filters += [f"without {', '.join(item.exclude)}"] if item.exclude else []
        if item.databases:
            filters.append(f"databases {', '.join(item.databases)}")
        rows.append(
            [
                f"`{item.name}`",
                stack.services[item.owner].title if item.owner else "(host)",
                item.kind,
                "<br>".join(f"`{p}`" for p in item.paths) + (f" ({'; '.join(filters)})" if filters else ""),
                CAPTURE_WORDS.get(item.capture, item.capture),
                "yes" if item.recreatable else "no",
                "yes" if item.backed_up else "no",
                f"`{item.pin}` = {stack.pin_value(item.pin)}" if item.pin else "-",
            ]
        )
    header = ["state", "held by", "kind", "paths", "capture", "recreatable", "in snapshots", "version pin"]
    return _table(header, rows)


def backup_summary(stack: Stack) -> str:
    b = stack.backup
    retention = ", ".join(f"{k.removeprefix('keep_')} {v}" for k, v in b.retention.items())
    return (
        f"restic, {'enabled' if b.enabled else 'disabled'}: a backup `{b.schedule}`, "
        f"`restic check` `{b.check_schedule}`"
        + (f" (reading {b.check_read_data_subset} of the data packs)" if b.check_read_data_subset else "")
        + ", "
        f"retention {retention}. The repository lies off the server and is set per site; its password comes "
        f"from the operator (`{b.password_env}`). Each snapshot records the version pins; a restore onto older "
        "pins is refused, one onto newer pins restores first and the deploy snapshots again before the new "
        "version migrates the state."
    )


def _tree_entries(stack: Stack) -> dict[str, str]:
    """Every path the data names, each with a note (a symlink's target, a unit's role)."""
    entries = {d.path: "" for d in stack.directories}
    entries.update({m.dir: "" for m in stack.models.values() if m.dir not in entries})
    for venv in stack.venvs.values():
        entries.setdefault(venv.path, "")
        if venv.link:
            entries[venv.link] = f"-> {venv.path}"
    for s in stack.systemd_services():
        entries[f"{stack.paths['units']}/{s.unit}"] = f"port {s.port}"
    return entries


def directory_tree(stack: Stack) -> str:
    """An indented tree of every path the data names, parents included."""
    tree: dict = {}
    notes = _tree_entries(stack)
    for path in notes:
        node = tree
        for part in path.strip("/").split("/"):
            node = node.setdefault(part, {})
    lines: list[str] = []

    def walk(node: dict, prefix: str, depth: int) -> None:
        for name in sorted(node):
            path = f"{prefix}/{name}"
            note = notes.get(path, "")
            lines.append(f"{'    ' * depth}{name}{'/' if node[name] or not note else ''} {note}".rstrip())
            walk(node[name], path, depth + 1)

    for top in sorted(tree):
        lines.append(f"/{top}/")
        walk(tree[top], f"/{top}", 1)
    return "```\n" + "\n".join(lines) + "\n```"


def mermaid(stack: Stack) -> str:
    lines = ["```mermaid", "flowchart LR", "  user([User])"]
    for s in stack.services.values():
        port = f" :{s.port}" if s.port else ""
        lines.append(f'  {s.name.replace("-", "_")}["{s.title}{port}"]')
    lines.append("  gpu[(GPU: " + stack.gpu.name + ")]")
    for s in stack.services.values():
        node = s.name.replace("-", "_")
        if s.exposure == "external" and s.ports:
            lines.append(f"  user --> {node}")
        if s.uses_gpu:
            lines.append(f"  {node} --> gpu")
    for consumer in ("open-webui", "dify-api"):
        for s in stack.services.values():
            if s.is_systemd and consumer in stack.services:
                lines.append(f"  {consumer.replace('-', '_')} -.-> {s.name.replace('-', '_')}")
    lines.append("```")
    return "\n".join(lines)


def render(stack: Stack) -> str:
    gpu = stack.gpu
    return "\n".join(
        [
            "# The kca AI server (generated from group_data/ — do not edit)",
            "",
            "Regenerate with `./kca docs`; the unit tests fail when this file is out of date.",
            "",
            f"GPU: {gpu.name}, {gpu.vram_total_gb:g} GB VRAM, {gpu.vram_usable_gb:g} GB usable. "
            "Only one large model holds the GPU at a time.",
            f"Domain: `{stack.network.domain}`. Docker network: `{stack.network.docker_network}`.",
            "",
            "## Services",
            "",
            services_table(stack),
            "",
            "## Port map",
            "",
            "External ports are open to the world; internal ones only to loopback and the Docker networks "
            "(the firewall enforces this, containers' published ports included).",
            "",
            port_map(stack),
            "",
            "## VRAM scenarios",
            "",
            "A vLLM service counts what it reserves (gpu_memory_utilization x total VRAM), not its weights.",
            "",
            vram_table(stack),
            "",
            "## One large model at a time (systemd relations)",
            "",
            conflicts_table(stack),
            "",
            "## State and backups",
            "",
            backup_summary(stack),
            "",
            state_table(stack),
            "",
            "## Directory layout",
            "",
            directory_tree(stack),
            "",
            "## Relations",
            "",
            mermaid(stack),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if docs/server.md is out of date")
    args = parser.parse_args(argv)
    text = render(build_stack(group_data("production")))
    if args.check:
        if not DOC_PATH.exists() or DOC_PATH.read_text() != text:
            print(f"{DOC_PATH} is out of date: run ./kca docs", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.parent.mkdir(exist_ok=True)
    DOC_PATH.write_text(text)
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
