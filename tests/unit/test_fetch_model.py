"""kca-fetch-model, the production model fetcher, against a real local HTTP server that behaves like
the hub (a 302 carrying X-Linked-ETag on HEAD, ranges on GET): verify, record, never refetch,
resume, refuse a mismatch without deleting anything."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

FETCHER = Path(__file__).resolve().parents[2] / "templates/usr/local/sbin/kca-fetch-model"
PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class Hub(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        Hub.requests.append(f"HEAD {self.path}")
        self.send_response(302)
        self.send_header("Location", "/cdn/file")
        self.send_header("X-Linked-ETag", f'"{DIGEST}"')
        self.end_headers()

    def do_GET(self):
        Hub.requests.append(f"GET {self.path} {self.headers.get('Range', '')}")
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hub.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fetch(hub_url: str, dest: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(FETCHER),
            "--repo",
            "org/model",
            "--revision",
            "abc",
            "--file",
            "m.gguf",
            "--dest",
            str(dest),
            *extra,
        ],
        env={**os.environ, "HF_ENDPOINT": hub_url},
        capture_output=True,
        text=True,
    )


def test_fetches_verifies_against_the_hub_checksum_and_records_it(hub, tmp_path):
    dest = tmp_path / "gpt-oss" / "m.gguf"
    run = fetch(hub, dest)
    assert run.returncode == 0, run.stderr
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "gpt-oss" / "m.gguf.sha256").read_text().split()[0] == DIGEST
    assert "hub sha256" in run.stdout


def test_a_verified_file_is_never_fetched_again(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    assert fetch(hub, dest).returncode == 0
    Hub.requests = []
    run = fetch(hub, dest)
    assert run.returncode == 0 and "present, verified" in run.stdout
    assert Hub.requests == []


def test_resumes_a_partial_download(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    Path(f"{dest}.part").write_bytes(PAYLOAD[:1000000])
    assert fetch(hub, dest).returncode == 0
    assert dest.read_bytes() == PAYLOAD
    assert any("bytes=1000000-" in r for r in Hub.requests)


def test_a_mismatch_is_refused_and_nothing_is_deleted(hub, tmp_path):
    dest = tmp_path / "m.gguf"
    run = fetch(hub, dest, "--sha256", "0" * 64)
    assert run.returncode == 3
    assert "CHECKSUM MISMATCH" in run.stderr
    assert dest.exists() and not Path(f"{dest}.sha256").exists()
