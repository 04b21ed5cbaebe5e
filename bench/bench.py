#!/usr/bin/env python3
"""Bare engine vs. the network, same machine, same request. Driven by bench/run.sh.

Starts a bootstrap node and one provider on 127.0.0.1 (ephemeral ports), then runs
`quiver ask --local --json` (the bare engine) and `quiver ask --json` through the network,
interleaved, and reports medians of the timings the commands print (`timing.ttft_ms`,
`timing.total_ms`, `timing.tokens_per_sec`) and of the commands' wall time.
"""

import argparse
import datetime
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GOAL_RATIO = 0.97


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Proc:
    """A node process; parses its printed addresses."""

    def __init__(self, argv, name, workdir):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "w"),
            text=True,
        )
        lines = queue.Queue()

        def pump():
            for line in self.p.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        self.tcp_addr = self.api = None
        deadline = time.monotonic() + 60
        while self.tcp_addr is None or self.api is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise SystemExit(f"{name} did not start; see {self.log_path}:\n" + open(self.log_path).read()[-3000:])
            if line.startswith("listening on ") and "/tcp/" in line:
                self.tcp_addr = line[len("listening on "):]
            elif line.startswith("api on "):
                self.api = line[len("api on "):]
        self.tcp_port = int(self.tcp_addr.split("/tcp/")[1].split("/")[0])
        self.peer_id = self.tcp_addr.rsplit("/p2p/", 1)[1]

    def status(self):
        try:
            with urllib.request.urlopen(f"{self.api}/api/v1/status", timeout=5) as r:
                return json.load(r)
        except Exception:
            return None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def run_ask(argv, timeout):
    started = time.monotonic()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - started
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout)
    t = result.get("timing")
    if not isinstance(t, dict) or not all(k in t for k in ("ttft_ms", "total_ms", "tokens_per_sec")):
        raise SystemExit(f"no timing in the result of {' '.join(argv)}: {r.stdout[:500]}")
    result["wall_s"] = wall
    return result


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True, help="directory of quiver, quiver-node, quiver-provider")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompt", default="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", help="continued as raw text (--raw)")
    ap.add_argument("--out", help="also write the report to this file")
    ap.add_argument("--command", default="bench/run.sh", help=argparse.SUPPRESS)
    a = ap.parse_args()

    quiver = os.path.join(a.bin, "quiver")
    node_bin = os.path.join(a.bin, "quiver-node")
    provider_bin = os.path.join(a.bin, "quiver-provider")
    models = os.path.abspath(a.models_dir)
    if not os.path.isfile(os.path.join(models, MODEL_FILE)):
        raise SystemExit(f"{models}/{MODEL_FILE} is missing: run scripts/fetch-model.sh")
    load_before = loadavg()
    if float(load_before.split()[0]) > 0.5 * (os.cpu_count() or 1):
        log(f"warning: the machine is busy (load average {load_before}); numbers will be noisy")

    work = tempfile.mkdtemp(prefix="quiver-bench-")
    procs = []
    try:
        common = ["--listen-ip", "127.0.0.1", "--port", "0", "--api", "127.0.0.1:0"]
        log("starting a bootstrap node and a provider on 127.0.0.1 ...")
        boot = Proc([node_bin, "--bootstrap-node", *common, "--data-dir", f"{work}/boot"], "boot", work)
        procs.append(boot)
        prov = Proc(
            [provider_bin, "--bootstrap", f"127.0.0.1:{boot.tcp_port}", *common, "--data-dir", f"{work}/provider",
             "--models-dir", models, "--threads", str(a.threads), "--no-fetch"],
            "provider", work,
        )
        procs.append(prov)
        deadline = time.monotonic() + 60
        while True:
            s = boot.status()
            if s and any(k["peer_id"] == prov.peer_id and k["models"] for k in s.get("known_nodes", [])):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the bootstrap node never heard of the provider's model")
            time.sleep(0.25)

        sampling = ["--json", "--raw", "--max-tokens", str(a.max_tokens), "--temperature", "0"]
        local_argv = [quiver, "ask", "--local", "--threads", str(a.threads), "--models-dir", models, *sampling, a.prompt]
        net_argv = [quiver, "ask", "--bootstrap", boot.tcp_addr, "--listen-ip", "127.0.0.1", *sampling, a.prompt]
        limit = 600

        log("warm-up (not counted): one bare, one network request")
        ref = run_ask(local_argv, limit)
        run_ask(net_argv, limit)

        local, net = [], []
        for i in range(a.reps):
            # Alternate the order so a drift of the machine's speed hits both modes alike.
            order = [("bare", local_argv, local), ("network", net_argv, net)]
            if i % 2:
                order.reverse()
            for name, argv, rows in order:
                r = run_ask(argv, limit)
                if r["text"] != ref["text"]:
                    raise SystemExit(f"{name} run {i + 1} answered differently from the first bare run")
                rows.append({
                    "ttft_ms": r["timing"]["ttft_ms"], "total_ms": r["timing"]["total_ms"],
                    "tps": r["timing"]["tokens_per_sec"], "wall_s": r["wall_s"],
                    "tokens": r["usage"]["completion_tokens"], "route": r.get("route", "-"),
                })
                log(f"rep {i + 1}/{a.reps} {name:7}: {r['timing']['tokens_per_sec']:7.1f} tok/s, "
                    f"TTFT {r['timing']['ttft_ms']:7.1f} ms, total {r['timing']['total_ms']:8.1f} ms, "
                    f"wall {r['wall_s']:5.2f} s, {r['usage']['completion_tokens']} tokens"
                    + (f", route {r['route']}" if "route" in r else ""))
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)

    tps_l, tps_n = med(local, "tps"), med(net, "tps")
    ttft_l, ttft_n = med(local, "ttft_ms"), med(net, "ttft_ms")
    ratio = tps_n / tps_l if tps_l else float("nan")
    routes = sorted({r["route"] for r in net})
    lines = [
        "# Benchmark: bare engine vs. through the network",
        "",
        f"- command: `{a.command.strip()}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), {cpu_model()}, "
        f"{platform.system()} {platform.release()}",
        f"- load average before: {load_before}; after: {loadavg()}",
        f"- code: {git_rev()}, binaries from `{a.bin}`",
        f"- model: smollm2-135m ({MODEL_FILE}), {a.threads} threads for both, greedy, "
        f"`--raw --max-tokens {a.max_tokens}` continuing {a.prompt!r}",
        f"- {a.reps} repetitions of each mode, interleaved, after one warm-up of each; network route: {', '.join(routes)}; "
        f"all answers identical to the bare engine's ({ref['usage']['completion_tokens']} tokens)",
        "",
        "Timings are those `quiver ask --json` prints (`timing`): from the request to the first token (TTFT), "
        "tokens/s after the first token. Network TTFT includes finding the provider (DHT lookup, "
        "gossip announcement and claim). Wall time is the whole command (process start, model "
        "load for bare, joining the network for network).",
        "",
        "| mode | tokens/s (median) | TTFT ms (median) | total ms (median) | wall s (median) |",
        "|---|---:|---:|---:|---:|",
        f"| bare engine (`quiver ask --local`) | {tps_l:.1f} | {ttft_l:.1f} | {med(local, 'total_ms'):.1f} | {med(local, 'wall_s'):.2f} |",
        f"| network (`quiver ask`) | {tps_n:.1f} | {ttft_n:.1f} | {med(net, 'total_ms'):.1f} | {med(net, 'wall_s'):.2f} |",
        "",
        f"- **tokens/s ratio network ÷ bare: {ratio:.3f}** (goal ≥ {GOAL_RATIO}: {'met' if ratio >= GOAL_RATIO else 'NOT met'})",
        f"- **TTFT overhead of the network: {ttft_n - ttft_l:+.1f} ms** (median network − median bare)",
        "",
        "Every run:",
        "",
        "| # | bare tok/s | bare TTFT ms | network tok/s | network TTFT ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i, (l, n) in enumerate(zip(local, net)):
        lines.append(f"| {i + 1} | {l['tps']:.1f} | {l['ttft_ms']:.1f} | {n['tps']:.1f} | {n['ttft_ms']:.1f} |")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
        log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
