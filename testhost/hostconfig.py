"""The host's apt and pip configuration, carried into the guest so that it reaches the same package
mirrors and indexes as this machine (which may reach nothing else). Pure functions over text: the
callers read the files and write the results.
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

# ---- apt -------------------------------------------------------------------------------------------


def deb822_stanzas(text: str) -> list[str]:
    """The stanzas of a deb822 .sources file (paragraphs separated by blank lines)."""
    return [s for s in re.split(r"\n[ \t]*\n", text.strip("\n")) if s.strip()]


def deb822_fields(stanza: str) -> dict[str, str]:
    """A stanza's fields, keys lower-cased; comment lines are skipped."""
    fields = {}
    for line in stanza.splitlines():
        if line.lstrip().startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    return fields


def _enabled_main(fields: dict[str, str]) -> bool:
    return fields.get("enabled", "yes").lower() != "no" and "main" in fields.get("components", "").split()


def mirror_from_deb822(text: str, suite: str) -> str | None:
    """The URI of the first enabled `deb` stanza for exactly `suite` with component main."""
    for stanza in deb822_stanzas(text):
        fields = deb822_fields(stanza)
        if (
            _enabled_main(fields)
            and "deb" in fields.get("types", "").split()
            and suite in fields.get("suites", "").split()
        ):
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None


def one_line_entries(text: str) -> list[list[str]]:
    """`deb [options] URI SUITE COMPONENT...` lines as word lists, options and comments removed."""
    entries = []
    for line in text.splitlines():
        line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0])
        words = line.split()
        if len(words) >= 4 and words[0] in ("deb", "deb-src"):
            entries.append(words)
    return entries


def mirror_from_one_line(text: str, suite: str) -> str | None:
    for words in one_line_entries(text):
        if words[0] == "deb" and words[2] == suite and "main" in words[3:]:
            return words[1]
    return None


def _suite_family(candidate: str, suite: str) -> bool:
    """bookworm, bookworm-updates, bookworm-security, bookworm/updates belong to bookworm."""
    return candidate == suite or candidate.startswith((f"{suite}-", f"{suite}/"))


def guest_deb822(text: str, suite: str) -> str:
    """The stanzas the guest keeps: enabled, component main, a suite of the family. Third-party
    repositories are left out: they need signing keys the guest does not have."""
    kept = [
        stanza
        for stanza in deb822_stanzas(text)
        if _enabled_main(fields := deb822_fields(stanza))
        and any(_suite_family(s, suite) for s in fields.get("suites", "").split())
    ]
    return "".join(f"{stanza}\n\n" for stanza in kept)


def guest_one_line(text: str, suite: str) -> list[str]:
    return [" ".join(words) for words in one_line_entries(text) if words[2].startswith(suite) and "main" in words[3:]]


# ---- pip -------------------------------------------------------------------------------------------

PipConfig = dict[str, dict[str, str]]  # section -> {key: value}


def merge_pip_config_list(output: str) -> PipConfig:
    """pip's own merge (`pip config list`: every file, then PIP_* variables as `:env:.key`) as one
    configuration; variables become [global] keys and win over files, as they do in pip."""
    merged: PipConfig = {}
    env: dict[str, str] = {}
    for line in output.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        section, _, key = name.partition(".")
        with contextlib.suppress(ValueError, SyntaxError):
            value = str(ast.literal_eval(value))
        if section == ":env:":
            env[key] = value
        else:
            merged.setdefault(section, {})[key] = value
    for key, value in env.items():
        merged.setdefault("global", {})[key] = value
    return merged


def pip_config_files(environ: dict[str, str], home: Path) -> list[Path]:
    """pip's configuration files in the order pip reads them (later wins), for a host without pip."""
    files = [Path(d) / "pip" / "pip.conf" for d in environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":") if d]
    files += [Path("/etc/pip.conf"), home / ".pip" / "pip.conf", home / ".config" / "pip" / "pip.conf"]
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    return files


def pip_environment(environ: dict[str, str]) -> dict[str, str]:
    """PIP_FIND_LINKS=... -> {"find-links": ...} (PIP_CONFIG_FILE names a file, not a setting)."""
    return {
        name[4:].lower().replace("_", "-"): value
        for name, value in environ.items()
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE"
    }


def render_pip_conf(config: PipConfig) -> str:
    lines = ["# written by testhost from this machine's pip configuration"]
    for section in sorted(config, key=lambda s: (s != "global", s)):
        lines.append(f"[{section}]")
        lines += [f"{key} = {config[section][key]}" for key in sorted(config[section])]
        lines.append("")
    return "\n".join(lines) + "\n"


def pip_local_paths(config: PipConfig) -> list[str]:
    """Local paths the configuration names (file:// URLs and absolute paths), in order, once each."""
    paths: list[str] = []
    for items in config.values():
        for value in items.values():
            for token in value.split():
                if token.startswith("file://"):
                    path = unquote(urlparse(token).path)
                elif token.startswith("/"):
                    path = token
                else:
                    continue
                if path not in paths:
                    paths.append(path)
    return paths


def pip_share_dirs(paths: Iterable[str], guest_root: Path) -> tuple[list[str], list[str]]:
    """The host folders to share read-only with the guest so that the paths in its pip.conf resolve,
    and a note for each path left out. A PEP 503 tree links ../../files/...: the folder that holds
    simple/ is shared. A file the guest already has (the CA bundle) is left to the guest."""
    shares: set[str] = set()
    notes: list[str] = []
    for raw in paths:
        path = Path(raw.rstrip("/") or "/")
        if path.is_dir():
            folder = path.parent if path.name == "simple" else path
        elif path.is_file():
            if (guest_root / path.relative_to("/")).exists():
                continue
            folder = path.parent
        else:
            continue
        # Never shadow a top-level system folder (/etc, /opt, /usr...) in the guest.
        if len(folder.parts) < 3:
            notes.append(f"not sharing {folder} (too close to /) for pip path {raw}")
            continue
        shares.add(str(folder))
    return sorted(shares), notes
