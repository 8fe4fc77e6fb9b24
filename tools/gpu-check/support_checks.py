"""Start the embedding and reranker servers on the GPU, check their answers, then benchmark them.

Run from the repository root with the python that has apps/requirements-support.txt installed
(tools/gpu-check/support-services.sh prepares one and calls this):

    python tools/gpu-check/support_checks.py --embedding-model DIR --reranker-model DIR --out DIR

KCA_DEVICE / KCA_PRECISION (default cuda / fp16) choose where the servers run. Writes OUT/checks.json,
OUT/embedding.log, OUT/reranker.log and OUT/bench.txt; prints a summary; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

DEVICE = os.environ.get("KCA_DEVICE", "cuda")
PRECISION = os.environ.get("KCA_PRECISION", "fp16")
# The production ports (services.bge-embedding and services.bge-reranker in group_data/all.py).
EMB_PORT, RR_PORT = 8083, 8006
EMB_URL, RR_URL = f"http://127.0.0.1:{EMB_PORT}", f"http://127.0.0.1:{RR_PORT}"
result: dict = {"device": DEVICE, "precision": PRECISION}


def log(msg: str) -> None:
    print(msg, flush=True)


def start(app: str, model: str, name: str, port: int, logfile: str) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ)
    env.update(
        KCA_MODEL_PATH=model,
        KCA_MODEL_NAME=name,
        KCA_DEVICE=DEVICE,
        KCA_PRECISION=PRECISION,
        KCA_BATCH_SIZE="32",
        KCA_MAX_ITEMS="256",
        KCA_MAX_TEXT_CHARS="32768",
        KCA_MAX_BODY_BYTES="8388608",
        PYTHONUNBUFFERED="1",
    )
    out = open(logfile, "w")  # noqa: SIM115 (held while the server runs)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, app, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    return proc, started


def model_pid(pid: int) -> list[int]:
    """The children of a server: its model process (apps/kca_service_common.py)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def wait_health(url: str, proc: subprocess.Popen, started: float, limit: float = 240) -> tuple[float, dict]:
    while time.monotonic() - started < limit:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: server exited with {proc.returncode}")
        try:
            r = requests.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                return time.monotonic() - started, r.json()
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url}: no 200 from /health in {limit}s")


def gpu_apps() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc}"


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedding-model", type=Path, required=True, help="sentence-transformers model folder")
    parser.add_argument("--reranker-model", type=Path, required=True, help="cross-encoder folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the logs and results")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    emb_name, rr_name = args.embedding_model.name, args.reranker_model.name
    emb, emb_t0 = start(
        "apps/bge_embedding_server.py", str(args.embedding_model), emb_name, EMB_PORT, f"{args.out}/embedding.log"
    )
    rr, rr_t0 = start("apps/reranker_server.py", str(args.reranker_model), rr_name, RR_PORT, f"{args.out}/reranker.log")
    result["pids"] = {"embedding": emb.pid, "reranker": rr.pid}
    ok = True
    try:
        # Both started together, so each load time is from its own launch with the other loading too.
        for name, url, proc, t0 in (("embedding", EMB_URL, emb, emb_t0), ("reranker", RR_URL, rr, rr_t0)):
            seconds, health = wait_health(url, proc, t0)
            result[f"{name}_health_s"] = round(seconds, 2)
            result[f"{name}_health"] = health
            good = health.get("device") == DEVICE and health.get("precision") == PRECISION
            ok &= good
            log(f"{name}: /health 200 after {seconds:.2f}s from launch: {health}  [{'OK' if good else 'MISMATCH'}]")
        result["models"] = requests.get(f"{EMB_URL}/v1/models", timeout=10).json()

        # Embeddings: 3 texts, two near-duplicates and one unrelated.
        texts = [
            "The cat is sleeping on the warm windowsill.",
            "A cat naps on the sunny window sill.",
            "Quarterly revenue of the semiconductor company rose by twelve percent.",
        ]
        r = requests.post(f"{EMB_URL}/v1/embeddings", json={"input": texts, "model": emb_name}, timeout=60)
        r.raise_for_status()
        body = r.json()
        vecs = [d["embedding"] for d in body["data"]]
        dims = [len(v) for v in vecs]
        norms = [math.sqrt(sum(x * x for x in v)) for v in vecs]
        near, far = cos(vecs[0], vecs[1]), cos(vecs[0], vecs[2])
        good = dims[0] > 0 and dims == [dims[0]] * 3 and near > far
        ok &= good
        result["embeddings"] = {
            "dims": dims,
            "norms": [round(n, 4) for n in norms],
            "cos_near_duplicate": round(near, 4),
            "cos_unrelated": round(far, 4),
            "usage": body["usage"],
            "model": body["model"],
        }
        log(
            f"embeddings: dims {dims}, norms {[round(n, 4) for n in norms]}, "
            f"cos near-dup {near:.4f} > unrelated {far:.4f}"
            f"  [{'OK' if good else 'FAIL'}]  usage {body['usage']}"
        )

        # Rerank: 1 query x 3 docs, the relevant one in the middle.
        docs = [
            "The museum opens at nine in the morning and closes at six.",
            "To reset your password, open Settings, choose Account and click 'Forgot password'.",
            "Bananas are rich in potassium and easy to carry.",
        ]
        r = requests.post(
            f"{RR_URL}/v1/rerank", json={"query": "How can I reset my password?", "documents": docs}, timeout=60
        )
        r.raise_for_status()
        body = r.json()
        order = [x["index"] for x in body["results"]]
        scores = [round(x["relevance_score"], 4) for x in body["results"]]
        good = order[0] == 1
        ok &= good
        result["rerank"] = {"order": order, "scores": scores, "usage": body["usage"]}
        log(f"rerank: order {order}, scores {scores}  [{'OK' if good else 'FAIL'}]")

        result["gpu_apps_after_checks"] = gpu_apps()
        # The GPU is held by each server's model process, a child of the pid started here.
        result["model_pids"] = {name: model_pid(proc.pid) for name, proc in (("embedding", emb), ("reranker", rr))}
        log(f"model processes (they hold the GPU): {result['model_pids']}")
        log(f"GPU memory per process after the checks (pid, name, used):\n{result['gpu_apps_after_checks']}")

        # The project's own bench (--skip-docling, pids given), three times.
        bench = [
            sys.executable,
            "bench/support_services.py",
            "--model-path",
            str(args.embedding_model),
            "--embedding-url",
            EMB_URL,
            "--reranker-url",
            RR_URL,
            "--device",
            "cuda" if DEVICE == "cuda" else "cpu",
            "--skip-docling",
            "--pid",
            f"embedding={emb.pid}",
            "--pid",
            f"reranker={rr.pid}",
        ]
        outs = []
        for i in (1, 2, 3):
            t = time.monotonic()
            p = subprocess.run(bench, capture_output=True, text=True, timeout=300)
            outs.append(
                f"--- bench run {i} (rc {p.returncode}, {time.monotonic() - t:.1f}s wall)\n{p.stdout}{p.stderr[-3000:]}"
            )
            log(outs[-1])
            ok &= p.returncode == 0
        with open(f"{args.out}/bench.txt", "w") as f:
            f.write("\n".join(outs))
        result["gpu_apps_after_bench"] = gpu_apps()
        log(f"GPU memory per process after the bench (pid, name, used):\n{result['gpu_apps_after_bench']}")
    finally:
        for proc in (emb, rr):
            proc.terminate()
        for proc in (emb, rr):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        result["all_ok"] = bool(ok)
        with open(f"{args.out}/checks.json", "w") as f:
            json.dump(result, f, indent=2)
        log(f"ALL CHECKS {'OK' if ok else 'NOT OK'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
