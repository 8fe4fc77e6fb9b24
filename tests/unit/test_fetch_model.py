"""kca-fetch-model, the production model fetcher, against a real local HTTP server that behaves like
the hub (a 302 carrying X-Linked-ETag and X-Linked-Size on HEAD for large files, 200 for small ones,
ranges on GET, 416 past the end, the snapshot listing), and misbehaves on demand: bodies that stop
short on a clean close, connections reset mid-file, no checksum at all. Each case checks what lands
on disk: a file is renamed and recorded only when verified, and nothing is ever deleted."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

FETCHER = Path(__file__).resolve().parents[2] / "files/usr/local/sbin/kca-fetch-model"
PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
CONFIG = json.dumps({"architectures": ["Stand-in"], "hidden_size": 8}).encode()


@dataclass
class HubState:
    """What the hub serves and how it misbehaves; each test sets its own."""

    # name -> (bytes, stored in LFS): LFS files carry a sha256 on HEAD and in the listing.
    files: dict[str, tuple[bytes, bool]] = field(default_factory=lambda: {"m.gguf": (PAYLOAD, True)})
    states_sha256: bool = True
    states_size: bool = True
    # The next N GETs promise the whole body, send half of it and close cleanly / reset the connection.
    cut_short: int = 0
    resets: int = 0
    # Seconds between 64 KiB pieces of a body: a download slow enough to be interrupted in the middle.
    pace: float = 0.0
    requests: list[str] = field(default_factory=list)
    reset_sockets: set = field(default_factory=set)


class Hub(http.server.BaseHTTPRequestHandler):
    state = HubState()

    def log_message(self, *args):
        pass

    def _file(self) -> tuple[bytes, bool]:
        return self.state.files[urlsplit(self.path).path.rsplit("/", 1)[-1]]

    def do_HEAD(self):
        self.state.requests.append(f"HEAD {self.path}")
        body, lfs = self._file()
        if lfs:
            self.send_response(302)
            self.send_header("Location", "/cdn/file")
            if self.state.states_sha256:
                self.send_header("X-Linked-ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            if self.state.states_size:
                self.send_header("X-Linked-Size", str(len(body)))
            self.send_header("Content-Length", "0")
        else:
            self.send_response(200)
            self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def do_GET(self):
        self.state.requests.append(f"GET {self.path} {self.headers.get('Range', '')}")
        if self.path.startswith("/api/models/"):
            return self._listing()
        payload, _ = self._file()
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.state.cut_short:
            self.state.cut_short -= 1
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif self.state.resets:
            self.state.resets -= 1
            self.wfile.write(body[: len(body) // 2])
            # SO_LINGER 0: the close sends a reset instead of a clean end of stream.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.state.reset_sockets.add(self.connection)
            self.close_connection = True
        elif self.state.pace:
            for start in range(0, len(body), 1 << 16):
                try:
                    self.wfile.write(body[start : start + (1 << 16)])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client was killed
                time.sleep(self.state.pace)
        else:
            self.wfile.write(body)

    def _listing(self):
        siblings = []
        for name, (body, lfs) in self.state.files.items():
            entry = {"rfilename": name, "size": len(body)}
            if lfs:
                entry["lfs"] = {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
            siblings.append(entry)
        body = json.dumps({"siblings": siblings}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HubServer(http.server.ThreadingHTTPServer):
    def shutdown_request(self, request):
        if request in Hub.state.reset_sockets:
            self.close_request(request)  # no shutdown() first: that would send a clean FIN
        else:
            super().shutdown_request(request)


@pytest.fixture
def hub():
    Hub.state = HubState()
    server = HubServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_fetcher(hub_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(FETCHER), "--repo", "org/model", "--revision", "abc", *args],
        env={**os.environ, "HF_ENDPOINT": hub_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def fetch(hub_url: str, dest: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_fetcher(hub_url, "--file", "m.gguf", "--dest", str(dest), *extra)


def record_of(dest: Path) -> str | None:
    record = Path(f"{dest}.sha256")
    return record.read_text().split()[0] if record.exists() else None


def test_fetches_verifies_against_the_hub_checksum_and_records_it(hub, tmp_path):
    dest = tmp_path / "gpt-oss" / "m.gguf"
    run = fetch(hub, dest)
    assert run.returncode == 0, run.stderr
    assert dest.read_bytes() == PAYLOAD
    assert record_of(dest) == DIGEST
    assert "hub sha256" in run.stdout


def test_a_verified_file_is_never_fetched_again(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    assert fetch(hub, dest).returncode == 0
    Hub.state.requests.clear()
    run = fetch(hub, dest)
    assert run.returncode == 0 and "present, verified" in run.stdout
    assert Hub.state.requests == []


def test_resumes_a_partial_download(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Path(f"{dest}.part").write_bytes(PAYLOAD[:1000000])
    assert fetch(hub, dest).returncode == 0
    assert dest.read_bytes() == PAYLOAD
    assert any("bytes=1000000-" in r for r in Hub.state.requests)


def test_a_mismatch_is_refused_and_nothing_is_deleted(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    run = fetch(hub, dest, "--sha256", "0" * 64)
    assert run.returncode == 3
    assert "MISMATCH" in run.stderr
    # Never renamed, never recorded, never deleted: the bytes wait in the .part for the operator.
    assert not dest.exists() and record_of(dest) is None
    assert Path(f"{dest}.part").read_bytes() == PAYLOAD


def test_a_body_that_stops_short_on_a_clean_close_is_resumed_not_renamed(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Hub.state.cut_short = 1
    run = fetch(hub, dest, "--retry-delay", "0")
    assert run.returncode == 0, run.stderr
    assert "resuming from byte" in run.stdout
    assert any(f"bytes={(len(PAYLOAD)) // 2}-" in r for r in Hub.state.requests), Hub.state.requests
    assert dest.read_bytes() == PAYLOAD and record_of(dest) == DIGEST


def test_a_hub_that_keeps_stopping_short_leaves_a_part_the_next_run_resumes(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Hub.state.cut_short = 3
    run = fetch(hub, dest, "--retries", "1", "--retry-delay", "0")
    assert run.returncode == 1
    assert "INCOMPLETE" in run.stderr and "the next run resumes" in run.stderr
    part = Path(f"{dest}.part")
    assert not dest.exists() and record_of(dest) is None
    assert 0 < part.stat().st_size < len(PAYLOAD) and PAYLOAD.startswith(part.read_bytes())
    # The next run (one more short body, then a whole one) completes it.
    run = fetch(hub, dest, "--retry-delay", "0")
    assert run.returncode == 0, run.stderr
    assert dest.read_bytes() == PAYLOAD and record_of(dest) == DIGEST and not part.exists()


def test_a_reset_connection_is_resumed_in_the_same_run(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Hub.state.resets = 2
    run = fetch(hub, dest, "--retry-delay", "0")
    assert run.returncode == 0, run.stderr
    assert "resuming from byte" in run.stdout
    assert dest.read_bytes() == PAYLOAD and record_of(dest) == DIGEST


def test_416_on_a_complete_part_is_verified_and_done(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Path(f"{dest}.part").write_bytes(PAYLOAD)
    run = fetch(hub, dest)
    assert run.returncode == 0, run.stderr
    assert any(f"bytes={len(PAYLOAD)}-" in r for r in Hub.state.requests)
    assert dest.read_bytes() == PAYLOAD and record_of(dest) == DIGEST
    assert not Path(f"{dest}.part").exists()


def test_416_on_a_complete_part_that_does_not_match_is_kept_unrecorded(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    wrong = bytes(len(PAYLOAD))
    Path(f"{dest}.part").write_bytes(wrong)
    run = fetch(hub, dest)
    assert run.returncode == 3
    assert "MISMATCH" in run.stderr
    assert not dest.exists() and record_of(dest) is None
    assert Path(f"{dest}.part").read_bytes() == wrong


def test_a_short_file_renamed_by_an_older_fetcher_is_resumed(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    dest.write_bytes(PAYLOAD[:1000000])  # no record: it never verified
    run = fetch(hub, dest)
    assert run.returncode == 0, run.stderr
    assert any("bytes=1000000-" in r for r in Hub.state.requests)
    assert dest.read_bytes() == PAYLOAD and record_of(dest) == DIGEST


def test_a_file_with_no_checksum_and_no_size_is_refused_and_not_recorded(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Hub.state.states_sha256 = Hub.state.states_size = False
    run = fetch(hub, dest)
    assert run.returncode == 4
    assert "UNVERIFIABLE" in run.stderr and "pin the file's sha256" in run.stderr
    assert not dest.exists() and record_of(dest) is None


def test_a_file_with_only_a_size_is_verified_by_its_size(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Hub.state.states_sha256 = False
    run = fetch(hub, dest)
    assert run.returncode == 0, run.stderr
    assert f"size {len(PAYLOAD)} bytes only" in run.stdout
    assert dest.read_bytes() == PAYLOAD and record_of(dest) == DIGEST


def test_a_truncated_file_with_only_a_size_is_never_recorded(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Hub.state.states_sha256 = False
    Hub.state.cut_short = 5
    run = fetch(hub, dest, "--retries", "1", "--retry-delay", "0")
    assert run.returncode == 1
    assert not dest.exists() and record_of(dest) is None


def test_a_size_pinned_in_data_verifies_a_file_the_hub_says_nothing_about(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Hub.state.states_sha256 = Hub.state.states_size = False
    assert fetch(hub, dest, "--size", str(len(PAYLOAD) + 1)).returncode == 1
    assert not dest.exists() and record_of(dest) is None
    run = fetch(hub, tmp_path / "ok.gguf", "--size", str(len(PAYLOAD)))
    assert run.returncode == 0, run.stderr
    assert record_of(tmp_path / "ok.gguf") == DIGEST


def test_a_snapshot_verifies_lfs_files_by_sha256_and_small_files_by_size(hub, tmp_path):
    Hub.state.files = {"config.json": (CONFIG, False), "model.safetensors": (PAYLOAD, True)}
    Hub.state.cut_short = 1  # config.json, first in the listing, stops short once
    dest = tmp_path / "snap"
    run = run_fetcher(hub, "--snapshot", "--dest", str(dest), "--retry-delay", "0")
    assert run.returncode == 0, run.stderr
    assert (dest / "config.json").read_bytes() == CONFIG
    assert (dest / "model.safetensors").read_bytes() == PAYLOAD
    assert record_of(dest / "model.safetensors") == DIGEST
    assert (dest / ".snapshot-complete").exists()
