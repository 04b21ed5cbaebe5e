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
import resource
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


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """CPU seconds used so far by a running process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def our_cpu(pids):
    """CPU seconds used by this script, its finished children and the running nodes `pids`."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + sum(proc_cpu(p) for p in pids)


def children_cpu():
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def busy_cpu():
    """CPU seconds the whole machine has been busy (all CPUs)."""
    try:
        total, idle = cpu_times()
        return (total - idle) / CLK_TCK
    except OSError:
        return 0.0


def run_ask(argv, timeout, pids):
    """Runs one `quiver ask --json`; adds its wall time and the CPU that other processes of the
    machine (not this benchmark's) used meanwhile, in CPUs on average."""
    busy0, ours0 = busy_cpu(), our_cpu(pids)
    kids0, nodes0 = children_cpu(), sum(proc_cpu(p) for p in pids)
    started = time.monotonic()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - started
    other = max(0.0, (busy_cpu() - busy0) - (our_cpu(pids) - ours0)) / max(wall, 1e-3)
    ask_cpu, nodes_cpu = children_cpu() - kids0, sum(proc_cpu(p) for p in pids) - nodes0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout)
    t = result.get("timing")
    if not isinstance(t, dict) or not all(k in t for k in ("ttft_ms", "total_ms", "tokens_per_sec")):
        raise SystemExit(f"no timing in the result of {' '.join(argv)}: {r.stdout[:500]}")
    result["wall_s"] = wall
    result["other_cpu"] = other
    result["ask_cpu"], result["nodes_cpu"] = ask_cpu, nodes_cpu
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


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + (v[4] if len(v) > 4 else 0)  # total, idle + iowait


def cpu_busy(seconds=2.0):
    """Fraction of all CPUs busy over `seconds` (None where /proc/stat is missing)."""
    try:
        t0, i0 = cpu_times()
        time.sleep(seconds)
        t1, i1 = cpu_times()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit=180.0, threshold=0.15):
    """Waits (at most `limit` s) for a moment when the machine is idle; returns its busy fraction."""
    deadline = time.monotonic() + limit
    busy = cpu_busy()
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        log(f"waiting for the machine to be idle (CPU {busy:.0%} busy) ...")
        busy = cpu_busy(5.0)
    if busy is not None and busy > threshold:
        log(f"warning: the machine is still busy (CPU {busy:.0%}); numbers will be noisy")
    return busy


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def publish(lines, out):
    """Prints the report (Markdown lines) and, with `out`, writes it there too."""
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if out:
        with open(out, "w") as f:
            f.write(report)
        log(f"wrote {out}")


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True, help="directory of quiver, quiver-node, quiver-provider")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--prompt", default="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", help="continued as raw text (--raw)")
    ap.add_argument("--out", help="also write the report to this file")
    ap.add_argument("--max-other-cpu", type=float, default=0.1,
                    help="a run during which other processes used more CPUs than this (on average) is repeated")
    ap.add_argument("--max-retries", type=int, default=5, help="repetitions of a disturbed run, at most")
    ap.add_argument("--command", default="bench/run.sh", help=argparse.SUPPRESS)
    a = ap.parse_args()

    quiver = os.path.join(a.bin, "quiver")
    node_bin = os.path.join(a.bin, "quiver-node")
    provider_bin = os.path.join(a.bin, "quiver-provider")
    models = os.path.abspath(a.models_dir)
    if not os.path.isfile(os.path.join(models, MODEL_FILE)):
        raise SystemExit(f"{models}/{MODEL_FILE} is missing: run scripts/fetch-model.sh")
    busy_before = wait_idle()
    load_before = loadavg()

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

        pids = [p.p.pid for p in procs]
        log("warm-up (not counted): one bare, one network request")
        ref = run_ask(local_argv, limit, pids)
        run_ask(net_argv, limit, pids)

        local, net = [], []
        discarded = 0
        for i in range(a.reps):
            # Alternate the order so a drift of the machine's speed hits both modes alike.
            order = [("bare", local_argv, local), ("network", net_argv, net)]
            if i % 2:
                order.reverse()
            for name, argv, rows in order:
                # A run during which other processes took CPU (this machine is shared) is
                # measured again, a few times at most.
                for attempt in range(a.max_retries + 1):
                    r = run_ask(argv, limit, pids)
                    if r["text"] != ref["text"]:
                        raise SystemExit(f"{name} run {i + 1} answered differently from the first bare run")
                    disturbed = r["other_cpu"] > a.max_other_cpu
                    log(f"rep {i + 1}/{a.reps} {name:7}: {r['timing']['tokens_per_sec']:7.1f} tok/s, "
                        f"TTFT {r['timing']['ttft_ms']:7.1f} ms, total {r['timing']['total_ms']:8.1f} ms, "
                        f"wall {r['wall_s']:5.2f} s, {r['usage']['completion_tokens']} tokens, "
                        f"other processes {r['other_cpu']:.2f} CPU"
                        + (f", route {r['route']}" if "route" in r else "")
                        + (" -- disturbed, measuring again" if disturbed and attempt < a.max_retries else ""))
                    if not disturbed or attempt == a.max_retries:
                        break
                    discarded += 1
                    time.sleep(2)
                rows.append({
                    "ttft_ms": r["timing"]["ttft_ms"], "total_ms": r["timing"]["total_ms"],
                    "tps": r["timing"]["tokens_per_sec"], "wall_s": r["wall_s"],
                    "tokens": r["usage"]["completion_tokens"], "route": r.get("route", "-"),
                    "other_cpu": r["other_cpu"], "ask_cpu": r["ask_cpu"], "nodes_cpu": r["nodes_cpu"],
                })
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
        f"- other load: CPU {'unknown' if busy_before is None else f'{busy_before:.0%}'} busy just before the run; "
        f"load average before: {load_before}, after: {loadavg()}",
        f"- code: {git_rev()}, binaries from `{a.bin}`",
        f"- model: smollm2-135m ({MODEL_FILE}), {a.threads} threads for both, greedy, "
        f"`--raw --max-tokens {a.max_tokens}` continuing {a.prompt!r}",
        f"- {a.reps} repetitions of each mode, interleaved, after one warm-up of each; network route: {', '.join(routes)}; "
        f"all answers identical to the bare engine's ({ref['usage']['completion_tokens']} tokens)",
        f"- the machine is shared: {discarded} run(s) during which other processes used more than "
        f"{a.max_other_cpu} CPU were discarded and measured again; the 'other CPU' columns show what was left",
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
        f"- CPU per request (median): bare {med(local, 'ask_cpu'):.2f} s; network {med(net, 'nodes_cpu'):.2f} s in the "
        f"provider and bootstrap node + {med(net, 'ask_cpu'):.2f} s in the client (`quiver ask`), which here shares "
        f"the {os.cpu_count()} CPUs with the provider's {a.threads} engine threads",
        "",
        "Every run:",
        "",
        "| # | bare tok/s | bare TTFT ms | bare: other CPU | network tok/s | network TTFT ms | network: other CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (l, n) in enumerate(zip(local, net)):
        lines.append(f"| {i + 1} | {l['tps']:.1f} | {l['ttft_ms']:.1f} | {l['other_cpu']:.2f} "
                     f"| {n['tps']:.1f} | {n['ttft_ms']:.1f} | {n['other_cpu']:.2f} |")
    publish(lines, a.out)


if __name__ == "__main__":
    main()
