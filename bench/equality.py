#!/usr/bin/env python3
"""Greedy chats through QUIVer against upstream llama.cpp's own server. Driven by bench/equality.sh.

A QUIVer network (bootstrap node, one provider with `--max-concurrent N`, a gateway node) and
upstream `llama-server --jinja --parallel N --no-kv-unified` run side by side on 127.0.0.1 with the
same model, threads and context per slot. llama-server is built from the same llama.cpp sources as
QUIVer's engine and with the same ggml CPU features (`bench/upstream.sh --portable`: GGML_NATIVE
off, the AVX2 baseline llama-cpp-sys-2 builds), so that both run identical kernels. Each question is
asked greedily of both through `/v1/chat/completions`; the answers are compared byte for byte.
"""

import argparse
import datetime
import json
import os
import subprocess
import tempfile
import urllib.request

from bench import MODEL_FILE, cpu_model, git_rev, log
from serving import Network, free_port, wait_http

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis briefly.",
    "Give me three tips for learning to cook.",
    "What is 17 times 23?",
    "Tell me a short story about a robot.",
    "Why is the sky blue?",
    "List the planets of the solar system.",
]


def chat(port, model, question, max_tokens):
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        answer = json.load(r)
    return answer["choices"][0]["message"]["content"], answer["usage"]["prompt_tokens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--upstream", required=True, help="directory of a portable llama-server build")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048, help="context per slot")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", help="append the results, as Markdown, to this file")
    a = ap.parse_args()
    a.quiver, a.node, a.provider = (os.path.join(a.bin, b) for b in ("quiver", "quiver-node", "quiver-provider"))
    a.models = os.path.abspath(a.models_dir)
    model = os.path.join(a.models, MODEL_FILE)
    work = tempfile.mkdtemp(prefix="quiver-equality-")
    port = free_port()
    up_log = open(os.path.join(work, "llama-server.log"), "w")
    up = subprocess.Popen(
        [os.path.join(a.upstream, "llama-server"), "-m", model, "-t", str(a.threads), "-tb", str(a.threads),
         "-c", str(a.context * a.slots), "--parallel", str(a.slots), "--no-kv-unified", "--jinja",
         "--host", "127.0.0.1", "--port", str(port), "--no-webui"],
        stdin=subprocess.DEVNULL, stdout=up_log, stderr=up_log)
    net = None
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        net = Network(a, a.slots, work)
        for q in QUESTIONS:
            theirs, their_prompt = chat(port, "m", q, a.max_tokens)
            ours, our_prompt = chat(net.port, "smollm2-135m", q, a.max_tokens)
            same = theirs == ours
            rows.append((q, same, their_prompt, our_prompt, theirs, ours))
            log(f"{'same' if same else 'DIFFERENT'}: {q}")
    finally:
        if net:
            net.stop()
        up.terminate()
        up.wait(timeout=10)
    equal = sum(r[1] for r in rows)
    lines = [
        f"## {datetime.date.today()} · {git_rev()} · {cpu_model()}",
        "",
        f"`bench/equality.sh`: {len(rows)} greedy chats of {a.max_tokens} tokens, {a.threads} threads, "
        f"{a.slots} slots of {a.context} tokens. **{equal} of {len(rows)} answers byte-identical** to "
        "upstream `llama-server --jinja --parallel "
        f"{a.slots} --no-kv-unified` built from the same sources with the same ggml CPU features.",
        "",
        "| question | same | prompt tokens (upstream / QUIVer) |",
        "|---|---|---|",
    ]
    lines += [f"| {q} | {'yes' if s else 'no'} | {tp} / {op} |" for q, s, tp, op, _, _ in rows]
    for q, s, _, _, theirs, ours in rows:
        if not s:
            lines += ["", f"`{q}`:", f"- upstream: {theirs!r}", f"- QUIVer: {ours!r}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n" + text)
    if equal != len(rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
