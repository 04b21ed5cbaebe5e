#!/usr/bin/env python3
"""A model split over processes (ggml RPC through QUIVer's /quiver/shard/1 tunnels) against the
whole model in one provider. Driven by bench/split.sh.

Each layout runs on 127.0.0.1 in turn: a bootstrap node, then either one provider with the whole
model, or a head (`quiver-provider --shard-peer ...`) and 1 or 2 members (`quiver-node
--shard-host --shard-allow <head>`), the layers dealt evenly (`--shard-split 1,1[,1]`); the split
layouts also run with a delay added inside the head's tunnels (QUIVER_SHARD_TEST_DELAY_MS, each
way), to show how speed falls with distance. The same client (`quiver ask --json --raw`, greedy,
different prompts) measures tokens/s and time to first token; the head's counters give the RPC
round trips and tunnel bytes per generated token. Ratios are against the whole model, same run.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time

from bench import Proc, cpu_model, git_rev, loadavg, log, publish, wait_idle
from network import wait_known


def ask(quiver, boot_addr, i, max_tokens):
    argv = [quiver, "ask", "--bootstrap", boot_addr, "--listen-ip", "127.0.0.1", "--json", "--raw", "--no-cache",
            "--max-tokens", str(max_tokens), f"{i + 1}, {i + 2}, {i + 3}, {i + 4},"]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"quiver ask failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def traffic(head):
    """Round trips and bytes (out, in) through all the head's tunnels so far."""
    members = (head.status() or {}).get("shard_head", {}).get("members", [])
    return (sum(m["round_trips"] for m in members), sum(m["bytes_sent"] for m in members),
            sum(m["bytes_received"] for m in members))


def run_layout(a, members, delay_ms):
    """Starts a network with the model whole (members = 0) or split; returns its measurements."""
    q = lambda name: os.path.join(a.bin, name)
    work = tempfile.mkdtemp(prefix="quiver-split-bench-")
    common = ["--listen-ip", "127.0.0.1", "--port", "0", "--api", "127.0.0.1:0", "--no-mdns", "--heartbeat-interval", "1"]
    procs = []
    try:
        boot = Proc([q("quiver-node"), "--bootstrap-node", "--data-dir", f"{work}/boot"] + common, "boot", work)
        procs.append(boot)
        host = f"127.0.0.1:{boot.tcp_port}"
        serving = ["--threads", str(a.threads), "--models-dir", a.models_dir, "--max-concurrent", "1"]
        if members == 0:
            head = Proc([q("quiver-provider"), "--bootstrap", host, "--data-dir", f"{work}/whole", "--gpu-layers", "0"]
                        + serving + common, "whole", work)
        else:
            head_dir = f"{work}/head"
            head_id = subprocess.run([q("quiver"), "id", "--data-dir", head_dir], capture_output=True, text=True,
                                     check=True).stdout.strip()
            peers = []
            for i in range(members):
                m = Proc([q("quiver-node"), "--bootstrap", host, "--data-dir", f"{work}/m{i}", "--shard-host",
                          "--shard-allow", head_id] + common, f"m{i}", work)
                procs.append(m)
                peers += ["--shard-peer", m.peer_id]
            argv = [q("quiver-provider"), "--bootstrap", host, "--data-dir", head_dir,
                    "--shard-split", ",".join(["1"] * (members + 1))] + peers + serving + common
            # The head's tunnels read the delay from its environment (Proc passes ours on).
            os.environ["QUIVER_SHARD_TEST_DELAY_MS"] = str(delay_ms)
            try:
                head = Proc(argv, "head", work)
            finally:
                os.environ.pop("QUIVER_SHARD_TEST_DELAY_MS", None)
            deadline = time.monotonic() + 300
            while (head.status() or {}).get("shard_head", {}).get("state") != "serving":
                if time.monotonic() > deadline:
                    raise SystemExit(f"the split model never loaded; see {head.log_path}")
                time.sleep(0.5)
        procs.append(head)
        wait_known([boot], head.peer_id)
        ask(q("quiver"), boot.tcp_addr, 1000, 8)  # warm-up
        before = traffic(head) if members else (0, 0, 0)
        rows = [ask(q("quiver"), boot.tcp_addr, i, a.max_tokens) for i in range(a.reps)]
        after = traffic(head) if members else (0, 0, 0)
        tokens = sum(r["usage"]["completion_tokens"] for r in rows) or 1
        prompt = sum(r["usage"]["prompt_tokens"] for r in rows)
        return {
            "tps": statistics.median(r["timing"]["tokens_per_sec"] for r in rows),
            "ttft_ms": statistics.median(r["timing"]["ttft_ms"] for r in rows),
            "round_trips_per_token": (after[0] - before[0]) / tokens,
            "kib_out_per_token": (after[1] - before[1]) / tokens / 1024,
            "kib_in_per_token": (after[2] - before[2]) / tokens / 1024,
            "tokens": tokens,
            "prompt_tokens": prompt,
            "providers": sorted({r["provider"] for r in rows}),
        }
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--delays", default="10,40", help="tunnel delays (ms, each way) for the split layouts")
    ap.add_argument("--out")
    ap.add_argument("--command", default="bench/split.sh")
    a = ap.parse_args()
    wait_idle()
    layouts = [(0, 0), (1, 0), (2, 0)]
    for d in [int(x) for x in a.delays.split(",") if x.strip()]:
        layouts += [(1, d), (2, d)]
    results = []
    for members, delay in layouts:
        log(f"layout: {members} members, delay {delay} ms")
        results.append(((members, delay), run_layout(a, members, delay)))
    whole = results[0][1]
    lines = [
        "# A model split over processes vs. the whole model",
        "",
        f"`{a.command}` on {datetime.date.today()} at `{git_rev()}`, {cpu_model()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}; load average before: {loadavg()}.",
        "",
        f"Default model, greedy, {a.reps} requests of {a.max_tokens} tokens per layout (medians), threads "
        f"{a.threads} in every process, all processes on this one machine (127.0.0.1). Split layouts deal "
        "the 30 blocks evenly over the head and its members (`--shard-split`); the delay is added inside "
        "the head's tunnels, each way, so a round trip grows by twice it.",
        "",
        "| layout | delay each way | tokens/s | ÷ whole | TTFT ms | RPC round trips / token | KiB out / token | KiB in / token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (members, delay), r in results:
        name = "whole model, 1 process" if members == 0 else f"split over {members + 1} processes"
        lines.append(
            f"| {name} | {delay} ms | {r['tps']:.1f} | {r['tps'] / whole['tps']:.2f} | {r['ttft_ms']:.0f} | "
            f"{r['round_trips_per_token']:.1f} | {r['kib_out_per_token']:.1f} | {r['kib_in_per_token']:.1f} |"
        )
    lines += [
        "",
        "Reading it: every generated token crosses each member once (about one RPC round trip per member "
        "per token, as measured), so a split's time per token is roughly the whole model's compute plus "
        "members × round trip, which the delayed rows show. Data out per token is mostly the compute graph "
        "ggml's RPC sends each step; data in is the hidden state the last member returns (the output layer "
        "runs on the head). Here all processes share one machine's cores, so the split rows also pay for "
        "contention and extra process hops; a split is for a model that fits on no single machine, "
        "not for speed.",
        "",
    ]
    publish(lines, a.out)


if __name__ == "__main__":
    main()
