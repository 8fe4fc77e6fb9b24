"""The HTTP path's own ceiling: the embedding server as deployed, with a forward pass of fixed cost.

On a GPU a pass of 16 short texts through BGE-M3 costs about what a pass of 32 does (it is bound by
kernel launches, not by arithmetic), so there the server's throughput at one text a request is set by
what surrounds the pass: the HTTP process (reading, tokenizing, gathering, answering) and how well it
keeps the model busy. This script measures that part on any machine. It runs the real server
(apps/bge_embedding_server.py: uvicorn, the batcher, the model's own process and its socket) with one
change: the model's process does not run a model. Each pass sleeps --pass-ms (the device's time; 0
for none) and answers zero vectors of --dimension floats, so the bytes that travel are a real pass's.

    python bench/http_path.py --tokenizer MODEL_DIR/tokenizer.json --pass-ms 15

The tokenizer is the model's real one. Prints, per load row: requests/s, texts/s, p50/p99, forward
passes per second and texts per pass (from /health), and the server's cores (both processes). The
ceiling for a row is one pass per --pass-ms holding every text in flight: the last column divides the
measured rate by it. Needs the support venv's web stack and tokenizers; no torch.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "apps"))
sys.path.insert(0, str(HERE))

import bge_embedding_server  # noqa: E402
import support_services  # noqa: E402

ROWS = [(1, 1), (16, 1), (64, 1), (16, 16), (64, 16)]


class FixedCostEmbedder(bge_embedding_server.Embedder):
    """The server's Embedder with a model process that only spends --pass-ms a pass."""

    def __init__(self, settings):
        super().__init__(settings)
        self.script = __file__  # the model's process runs this file with --model-process

    def load(self) -> dict[str, Any]:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(os.environ["KCA_BENCH_TOKENIZER"])
        return {
            "tokenizer": tokenizer.to_str(),
            "max_tokens": self.settings.max_text_tokens,
            "pad_id": 0,
            "dimension": int(os.environ["KCA_BENCH_DIMENSION"]),
            "threads": 1,
        }

    def run_pass(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        time.sleep(float(os.environ["KCA_BENCH_PASS_MS"]) / 1000)
        return np.zeros((len(arrays["input_ids"]), int(os.environ["KCA_BENCH_DIMENSION"])), dtype=np.float32)


def serve(argv: list[str]) -> None:
    """Either process of the server, as bge_embedding_server.main() runs it."""
    bge_embedding_server.Embedder = FixedCostEmbedder  # create_app and main() take the holder by this name
    bge_embedding_server.main(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> dict:
    return requests.get(f"{url}/health", timeout=10).json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, type=Path, help="the model's tokenizer.json")
    parser.add_argument("--pass-ms", type=float, default=15.0, help="what the device spends a pass (0: nothing)")
    parser.add_argument("--dimension", type=int, default=1024, help="floats a vector (BGE-M3: 1024)")
    parser.add_argument("--load-seconds", type=float, default=8)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--rows", default=",".join(f"{c}x{t}" for c, t in ROWS), help="CLIENTSxTEXTS, comma-separated")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "KCA_MODEL_PATH": str(args.tokenizer.parent),
        "KCA_BENCH_TOKENIZER": str(args.tokenizer),
        "KCA_BENCH_PASS_MS": str(args.pass_ms),
        "KCA_BENCH_DIMENSION": str(args.dimension),
        "KCA_BATCH_TOKENS": "4096",
        "KCA_MAX_TEXT_TOKENS": "4096",
        **dict(item.split("=", 1) for item in args.env),
    }
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--port", str(port), "--log-level", "warning"], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        texts = support_services.sample_texts(1024)
        load = support_services.ClientProcesses(args.client_processes)
        lines = [
            ["load", "requests/s", "texts/s", "p50 ms", "p99 ms", "passes/s", "texts a pass", "cores", "/ ceiling"]
        ]
        try:
            for clients, per_request in ROWS:
                if f"{clients}x{per_request}" not in args.rows.split(","):
                    continue
                calls = support_services.embedding_calls(url, None, clients, per_request, texts)
                before = health(url)
                result = support_services.measured(load, calls, args.load_seconds, server.pid)
                after = health(url)
                # /health counts from the start: the row's share, warm-up included (about 1 s more).
                spent = args.load_seconds + 1
                passes = (after["forward_passes"] - before["forward_passes"]) / spent
                per_pass = (after["texts"] - before["texts"]) / max(
                    1, after["forward_passes"] - before["forward_passes"]
                )
                in_flight = clients * per_request
                ceiling = in_flight / (args.pass_ms / 1000) if args.pass_ms else float("inf")
                lines.append(
                    [
                        f"{clients} x {per_request}",
                        f"{len(result.latencies) / result.seconds:.0f}",
                        f"{result.rate:.0f}",
                        f"{result.percentile(0.5) * 1000:.1f}",
                        f"{result.percentile(0.99) * 1000:.1f}",
                        f"{passes:.0f}",
                        f"{per_pass:.1f}",
                        f"{result.cores:.2f}",
                        f"{result.rate / ceiling:.2f}" if args.pass_ms else "-",
                    ]
                )
                print(f"  {lines[-1]}", flush=True)
        finally:
            load.close()
        print(f"\npass: {args.pass_ms:g} ms, {args.dimension} floats a vector; {support_services.machine()}")
        print(f"{support_services.load_average()}; ceiling: every text in flight in one pass per pass time")
        support_services.print_markdown(lines)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2:])
    elif "--model-process" in sys.argv:  # started by the server (ModelHolder.spawn_model_process)
        serve(sys.argv[1:])
    else:
        main()
