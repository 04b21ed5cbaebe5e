"""Drives a QUIVer gateway with the official `openai` Python client.

Called by crates/quiver-cli/tests/gateway.rs with the gateway's base URL in OPENAI_BASE_URL and
the expected provider's PeerId in QUIVER_PROVIDER. Prints one JSON object with what it saw on
its last line; any failed check raises (non-zero exit) with the reason.
"""

import asyncio
import json
import os
import sys

import openai

MODEL = "smollm2-135m"
PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def burst(n):
    client = openai.AsyncOpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="unused", timeout=120, max_retries=0)

    async def one(i):
        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Give me word number {i}."}], max_tokens=8,
            temperature=0)
        return chat.usage.completion_tokens

    tokens = await asyncio.gather(*[one(i) for i in range(n)])
    check(all(t > 0 for t in tokens), f"burst answers {tokens}")
    return len(tokens)


def main():
    provider = os.environ["QUIVER_PROVIDER"]
    # The key is not checked by an open gateway, but the client insists on one.
    client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="unused", timeout=120, max_retries=0)
    out = {"openai_version": openai.__version__}

    # Models list: the network's model, with its provider count.
    models = client.models.list()
    ids = [m.id for m in models.data]
    check(MODEL in ids, f"{MODEL} not in the models list: {ids}")
    entry = next(m for m in models.data if m.id == MODEL)
    out["models"] = ids
    out["providers"] = (entry.model_extra or {}).get("providers")
    one = client.models.retrieve(MODEL)
    check(one.id == MODEL and (one.model_extra or {}).get("providers") == out["providers"], f"retrieve: {one}")
    try:
        client.models.retrieve("no-such-model")
        raise AssertionError("an unknown model was retrieved")
    except openai.NotFoundError as e:
        check(e.code == "model_not_found", f"code {e.code}")

    # Non-streamed chat, greedy.
    chat = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=24, temperature=0)
    text = chat.choices[0].message.content
    check(chat.object == "chat.completion", f"object {chat.object}")
    check(chat.choices[0].message.role == "assistant", "role")
    check(text and text.strip(), f"empty answer: {chat}")
    check(chat.usage.completion_tokens == 24 and chat.choices[0].finish_reason == "length", f"usage {chat.usage}")
    check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "total_tokens")
    quiver = (chat.model_extra or {}).get("quiver") or {}
    check(quiver.get("provider") == provider, f"answered by {quiver.get('provider')}, not {provider}")
    check(quiver.get("receipt", {}).get("verified") is True, "receipt not verified")
    out["chat"] = {"text": text, "usage": chat.usage.model_dump(), "route": quiver.get("route")}

    # The same question as a list of content parts (as frameworks send it): the same request.
    parts = [{"role": "user", "content": [{"type": "text", "text": PROMPT[0]["content"]}]}]
    again = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=24, temperature=0)
    check(again.choices[0].message.content == text, f"content parts answered {again.choices[0].message.content!r}")

    # Streamed chat, greedy, one token more: the same tokens first, as SSE chunks, then usage.
    stream = client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=25, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, chunks, stream_provider = [], None, None, 0, None
    for chunk in stream:
        chunks += 1
        check(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object}")
        if chunk.usage is not None:
            usage = chunk.usage
            stream_provider = ((chunk.model_extra or {}).get("quiver") or {}).get("provider")
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    streamed = "".join(pieces)
    check(len(pieces) > 1, f"the answer came in {len(pieces)} piece(s), not streamed")
    check(finish == "length", f"finish_reason {finish}")
    check(usage is not None and usage.completion_tokens == 25, f"usage {usage}")
    check(stream_provider == provider, f"streamed by {stream_provider}, not {provider}")
    check(streamed.startswith(text), f"greedy stream {streamed!r} does not extend {text!r}")
    out["stream"] = {"text": streamed, "pieces": len(pieces), "chunks": chunks, "finish_reason": finish}

    # Legacy completions, streamed.
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if c.choices]
    check("".join(pieces).strip(), "empty completion stream")
    out["completion"] = "".join(pieces)

    # A burst from one client: eight requests at once, no retries. The gateway is one peer to
    # the provider, which queues what its slots cannot take; none may be refused.
    out["burst"] = asyncio.run(burst(8))

    # An unknown model: 404 in OpenAI's shape, raised as NotFoundError.
    try:
        client.chat.completions.create(model="no-such-model", messages=PROMPT, max_tokens=4)
        raise AssertionError("an unknown model was answered")
    except openai.NotFoundError as e:
        check(e.status_code == 404, f"status {e.status_code}")
        check(e.code == "model_not_found", f"code {e.code}")
        check(e.type == "invalid_request_error", f"type {e.type}")
        out["unknown_model"] = {"status": e.status_code, "code": e.code, "message": e.message}

    # A bad request: 400, raised as BadRequestError.
    try:
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=4)
        raise AssertionError("an empty message list was answered")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"status {e.status_code}")
        out["bad_request"] = {"status": e.status_code, "code": e.code}

    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report every failure the same way: reason on stderr, exit 1
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
