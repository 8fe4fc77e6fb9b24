#!/usr/bin/env python3
"""Start llama-server in three configurations (all layers on the GPU, -ngl 0, CPU only), time the load
(launch -> GET /health 200), send real /v1/chat/completions requests and record the `timings` llama-server
returns, plus the process's GPU memory as nvidia-smi reports it. Standard library only.

Called by `tools/gpu-check/llama-cpp.sh serve`; docs/gpu-check.md says what the figures mean.
"""

import argparse
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--logdir", default="/tmp")
# Not 8080-8084: the check may run on the server itself, where those ports belong to the LLM services.
ap.add_argument("--port", type=int, default=18080)
args = ap.parse_args()

BASE = f"http://127.0.0.1:{args.port}"
CASES = [
    ("gpu_ngl99", ["-ngl", "99", "-fa", "on", "-c", "4096"]),
    ("ngl0", ["-ngl", "0", "-fa", "on", "-c", "4096"]),  # CUDA build, weights in RAM
    ("cpu_only", ["-ngl", "0", "--device", "none", "-fa", "on", "-c", "4096"]),  # no GPU at all
]
SHORT = "Say hello in one short sentence."
LONG = (
    "Here are some notes about running a small language model on a server. " * 40
    + "\nSummarise the notes above in a few sentences, then explain why GPU offload helps."
)


def get(path, timeout=2):
    with urllib.request.urlopen(BASE + path, timeout=timeout) as r:
        return r.status, r.read()


def chat(content, max_tokens):
    body = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "cache_prompt": False,
    }
    req = urllib.request.Request(
        BASE + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        res = json.loads(r.read())
    wall = time.perf_counter() - t
    return {
        "wall_s": round(wall, 4),
        "timings": res.get("timings"),
        "usage": res.get("usage"),
        "text": res["choices"][0]["message"]["content"][:300],
    }


def gpu_mem(pid):
    out = {}
    try:
        q = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        out["compute_apps"] = q.strip().splitlines()
        out["this_pid_MiB"] = None
        for line in out["compute_apps"]:
            f = [x.strip() for x in line.split(",")]
            if f and f[0] == str(pid):
                out["this_pid_MiB"] = f[-1]
        g = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        out["gpu"] = g.strip()
    except Exception as e:  # noqa
        out["error"] = repr(e)
    return out


results = {"model": args.model, "model_bytes": os.path.getsize(args.model), "cases": {}}
for name, extra in CASES:
    cmd = [args.bin, "-m", args.model, "--host", "127.0.0.1", "--port", str(args.port)] + extra
    logf = open(os.path.join(args.logdir, f"server-{name}.log"), "w")  # noqa: SIM115 (held while the server runs)
    logf.write("$ " + " ".join(cmd) + "\n")
    logf.flush()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    r = {"cmd": " ".join(cmd)}
    ok = False
    while time.perf_counter() - t0 < 120 and p.poll() is None:
        try:
            st, _ = get("/health", timeout=1)
            if st == 200:
                ok = True
                break
        except Exception:
            pass
        time.sleep(0.05)
    r["health_200"] = ok
    r["load_s"] = round(time.perf_counter() - t0, 3)
    if ok:
        try:
            r["props_build_info"] = json.loads(get("/props")[1]).get("build_info")
        except Exception as e:
            r["props_error"] = repr(e)
        try:
            r["warmup"] = chat(SHORT, 16)
            r["short_64"] = chat(SHORT, 64)
            r["long_prompt_64"] = chat(LONG, 64)
            r["long_prompt_256"] = chat(LONG, 256)
        except Exception as e:
            r["request_error"] = repr(e)
        r["nvidia_smi"] = gpu_mem(p.pid)
    else:
        r["exit_code"] = p.poll()
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    logf.close()
    results["cases"][name] = r

    def t(k, r=r):
        return (r.get(k) or {}).get("timings") or {}

    print(
        f"{name}: load {r['load_s']} s | short64 pp {t('short_64').get('prompt_n')} tok "
        f"{t('short_64').get('prompt_per_second')} tok/s, tg {t('short_64').get('predicted_n')} tok "
        f"{t('short_64').get('predicted_per_second')} tok/s | long64 pp {t('long_prompt_64').get('prompt_n')} tok "
        f"{t('long_prompt_64').get('prompt_per_second')} tok/s, tg {t('long_prompt_64').get('predicted_per_second')} | "
        f"long256 tg {t('long_prompt_256').get('predicted_per_second')} tok/s | "
        f"GPU mem this pid {r.get('nvidia_smi', {}).get('this_pid_MiB')}",
        flush=True,
    )
    time.sleep(1)

with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
print(json.dumps(results, indent=1)[:6000])
