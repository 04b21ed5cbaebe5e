#!/usr/bin/env python3
"""Two providers vs one, and what an idle node costs. Driven by bench/network.sh.

Starts on 127.0.0.1 (ephemeral ports) a bootstrap node, a plain node and provider A (one engine
thread each provider). Phase 1 sends a batch of different greedy requests (`quiver ask --json
--no-cache`, several at once) while A is the only provider; provider B (one thread) joins and
phase 2 sends the same batch again. The ratio of the two batches' throughput (tokens per second of
wall time) is measured in the same run. Then, with all four nodes up and no requests, an idle
window measures each process's CPU, resident memory and the bytes it sends and receives
(`libp2p_bandwidth_bytes_total` from its /metrics: gossip heartbeats, pings, DHT upkeep).
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

from bench import MODEL_FILE, Proc, cpu_model, git_rev, loadavg, log, proc_cpu, publish, wait_idle


def rss_mib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


BANDWIDTH = re.compile(r'^libp2p_bandwidth_bytes_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)', re.M)


def bandwidth(proc):
    """Bytes sent and received so far over every transport, from the node's /metrics."""
    with urllib.request.urlopen(f"{proc.api}/metrics", timeout=5) as r:
        text = r.read().decode()
    sent = received = 0.0
    for m in BANDWIDTH.finditer(text):
        labels = m.group("labels").lower()
        if 'direction="outbound"' in labels:
            sent += float(m.group("value"))
        elif 'direction="inbound"' in labels:
            received += float(m.group("value"))
    return sent, received


def knows_model(proc, peer_id):
    s = proc.status()
    return bool(s) and any(k["peer_id"] == peer_id and k["models"] for k in s.get("known_nodes", []))


def wait_known(procs, peer_id, limit=90):
    deadline = time.monotonic() + limit
    while not all(knows_model(p, peer_id) for p in procs):
        if time.monotonic() > deadline:
            raise SystemExit(f"the network never heard of provider {peer_id}'s model")
        time.sleep(0.25)


def batch(quiver, boot_addr, a, label):
    """`a.requests` different greedy requests, `a.concurrency` at a time; returns throughput and
    which provider answered each."""
    def ask(i):
        argv = [quiver, "ask", "--bootstrap", boot_addr, "--listen-ip", "127.0.0.1", "--json", "--raw",
                "--no-cache", "--temperature", "0", "--max-tokens", str(a.max_tokens),
                f"{i + 1}, {i + 2}, {i + 3}, {i + 4},"]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise SystemExit(f"request {i + 1} ({label}) failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.concurrency) as pool:
        results = list(pool.map(ask, range(a.requests)))
    wall = time.monotonic() - started
    tokens = sum(r["usage"]["completion_tokens"] for r in results)
    by_provider = {}
    for r in results:
        by_provider[r["provider"]] = by_provider.get(r["provider"], 0) + 1
    log(f"{label}: {a.requests} requests, {tokens} tokens in {wall:.1f} s = {tokens / wall:.1f} tok/s; "
        f"per provider {sorted(by_provider.values(), reverse=True)}")
    return {"wall": wall, "tokens": tokens, "tps": tokens / wall, "by_provider": by_provider,
            "texts": [r["text"] for r in results]}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True, help="directory of quiver, quiver-node, quiver-provider")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--idle-secs", type=int, default=60)
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin provider A to CPU 0 and provider B to CPU 1 (taskset)")
    ap.add_argument("--out", help="also write the report (Markdown) to this file")
    ap.add_argument("--command", default="bench/network.sh", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.pin and (len(os.sched_getaffinity(0)) < 2 or not shutil.which("taskset")):
        log("fewer than 2 CPUs or no taskset: providers not pinned")
        a.pin = False

    quiver = os.path.join(a.bin, "quiver")
    node_bin = os.path.join(a.bin, "quiver-node")
    provider_bin = os.path.join(a.bin, "quiver-provider")
    models = os.path.abspath(a.models_dir)
    model_path = os.path.join(models, MODEL_FILE)
    if not os.path.isfile(model_path):
        raise SystemExit(f"{model_path} is missing: run scripts/fetch-model.sh")
    busy_before = wait_idle()
    load_before = loadavg()

    work = tempfile.mkdtemp(prefix="quiver-bench-net-")
    procs = {}
    try:
        common = ["--listen-ip", "127.0.0.1", "--port", "0", "--api", "127.0.0.1:0"]
        boot = procs["bootstrap node"] = Proc(
            [node_bin, "--bootstrap-node", *common, "--data-dir", f"{work}/boot"], "boot", work)
        join = ["--bootstrap", f"127.0.0.1:{boot.tcp_port}"]
        procs["node"] = Proc([node_bin, *join, *common, "--data-dir", f"{work}/node"], "node", work)

        def provider(name, cpu):
            # Each provider on a core of its own, as if on a machine of its own: the second
            # provider adds a core's worth of capacity, which the network must put to use.
            pin = ["taskset", "-c", str(cpu)] if a.pin else []
            return Proc([*pin, provider_bin, *join, *common, "--data-dir", f"{work}/{name}", "--models-dir", models,
                         "--threads", "1", "--no-fetch"], name, work)

        a_proc = procs["provider A"] = provider("provider-a", 0)
        wait_known([boot, procs["node"]], a_proc.peer_id)
        log("phase 1: one provider")
        one = batch(quiver, boot.tcp_addr, a, "one provider")

        b_proc = procs["provider B"] = provider("provider-b", 1)
        wait_known([boot, procs["node"], a_proc], b_proc.peer_id)
        log("phase 2: two providers")
        two = batch(quiver, boot.tcp_addr, a, "two providers")
        if two["texts"] != one["texts"]:
            raise SystemExit("the two phases answered the same requests differently")

        log(f"idle window: {a.idle_secs} s without requests")
        time.sleep(5)  # the last requests' connections and jobs settle
        before = {n: (proc_cpu(p.p.pid), bandwidth(p)) for n, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(a.idle_secs)
        elapsed = time.monotonic() - t0
        idle = {}
        for n, p in procs.items():
            cpu0, (s0, r0) = before[n]
            s1, r1 = bandwidth(p)
            idle[n] = {
                "cpu_pct": 100 * (proc_cpu(p.p.pid) - cpu0) / elapsed,
                "rss": rss_mib(p.p.pid),
                "sent_per_min": (s1 - s0) * 60 / elapsed,
                "recv_per_min": (r1 - r0) * 60 / elapsed,
            }
    finally:
        for p in reversed(list(procs.values())):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)

    ratio = two["tps"] / one["tps"]
    model_mib = os.path.getsize(model_path) / 2**20
    lines = [
        "# Benchmark: two providers vs one; an idle node's CPU, memory and bandwidth",
        "",
        f"- command: `{a.command.strip()}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}, {platform.system()} {platform.release()}; "
        f"CPU {'unknown' if busy_before is None else f'{busy_before:.0%}'} busy just before; "
        f"load average before: {load_before}, after: {loadavg()}",
        f"- code: {git_rev()}, binaries from `{a.bin}`",
        f"- network on 127.0.0.1: a bootstrap node, a node, provider A, later provider B; each provider "
        f"smollm2-135m ({MODEL_FILE}, {model_mib:.0f} MiB) with 1 engine thread"
        + (", provider A pinned to CPU 0 and B to CPU 1 (`taskset`), one job at a time each; the nodes and "
           "clients run on any CPU" if a.pin else ", not pinned"),
        f"- batch: {a.requests} different greedy requests (`quiver ask --json --raw --no-cache "
        f"--max-tokens {a.max_tokens}`), {a.concurrency} at a time, each a new client process joining "
        "through the bootstrap node; the same batch in both phases, same answers",
        "",
        "| phase | tokens | wall s | tokens/s of wall time | requests per provider |",
        "|---|---:|---:|---:|---|",
        f"| one provider (A) | {one['tokens']} | {one['wall']:.1f} | {one['tps']:.1f} | "
        f"{sorted(one['by_provider'].values(), reverse=True)} |",
        f"| two providers (A, B) | {two['tokens']} | {two['wall']:.1f} | {two['tps']:.1f} | "
        f"{sorted(two['by_provider'].values(), reverse=True)} |",
        "",
        f"- **throughput ratio two providers ÷ one: {ratio:.2f}** (2.00 would be perfect scaling; the "
        "providers' cores also run some of the nodes' and the client processes' work)",
        "",
        f"Idle window: {a.idle_secs} s, all four processes up, no requests (heartbeats every 10 s, "
        "pings every 15 s, DHT upkeep). Bytes are the libp2p transport counters of each node.",
        "",
        "| process | CPU (% of one core) | resident memory MiB | sent per minute | received per minute |",
        "|---|---:|---:|---:|---:|",
    ]
    for n, v in idle.items():
        lines.append(f"| {n} | {v['cpu_pct']:.2f} | {v['rss']:.0f} | {v['sent_per_min'] / 1024:.1f} KiB "
                     f"| {v['recv_per_min'] / 1024:.1f} KiB |")
    prov_rss = idle["provider A"]["rss"]
    lines += [
        "",
        f"- provider A's resident memory ÷ the model file: {prov_rss / model_mib:.2f} "
        f"({prov_rss:.0f} MiB ÷ {model_mib:.0f} MiB); a plain node's ÷ a provider's: "
        f"{idle['node']['rss'] / prov_rss:.2f}",
    ]
    publish(lines, a.out)


if __name__ == "__main__":
    main()
