"""Drives a QUIVer gateway with the official `ollama` Python client (Ollama's own API:
/api/tags, /api/show, /api/ps, /api/version, /api/chat, /api/generate), and compares its greedy
answers with the `openai` client's through the same gateway.

Called by crates/quiver-cli/tests/surface.rs with the gateway's address in OLLAMA_HOST. Prints one
JSON object with what it saw on its last line; any failed check raises (non-zero exit).
"""

import json
import os

import httpx
import jsonschema
import ollama
import openai

MODEL = "smollm2-135m"
GREEDY = {"temperature": 0, "num_predict": 24}
QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    host = os.environ["OLLAMA_HOST"]
    client = ollama.Client(host=host, timeout=180)
    out = {}

    version = httpx.get(f"{host}/api/version", timeout=30).json()
    check(isinstance(version.get("version"), str), f"version {version}")

    listed = client.list()
    names = [m.model for m in listed.models]
    check(f"{MODEL}:latest" in names, f"list {names}")
    entry = next(m for m in listed.models if m.model == f"{MODEL}:latest")
    check(entry.details.format == "gguf" and len(entry.digest) == 64, f"entry {entry}")
    out["list"] = names
    shown = client.show(MODEL)
    check(shown.details.format == "gguf" and "completion" in (shown.capabilities or []), f"show {shown}")
    running = client.ps()
    check(any(m.model == f"{MODEL}:latest" for m in running.models), f"ps {running}")

    # Chat, whole and streamed: the same greedy text, Ollama's counts at the end.
    whole = client.chat(model=MODEL, messages=QUESTION, options=GREEDY, stream=False)
    check(whole.done and whole.done_reason in ("stop", "length"), f"chat {whole}")
    check(whole.message.role == "assistant" and whole.message.content, f"chat message {whole.message}")
    check(whole.eval_count and whole.eval_count <= 24 and whole.prompt_eval_count > 0, f"counts {whole}")
    pieces = list(client.chat(model=MODEL, messages=QUESTION, options=GREEDY, stream=True))
    # (A repeat of a greedy request may come from the gateway's cache in one piece.)
    check(len(pieces) >= 2 and pieces[-1].done and not any(p.done for p in pieces[:-1]), "stream shape")
    streamed = "".join(p.message.content for p in pieces)
    check(streamed == whole.message.content, f"streamed {streamed!r} != {whole.message.content!r}")
    out["chat"] = whole.message.content

    # The same greedy question through the OpenAI API of the same gateway: the same answer.
    oa = openai.OpenAI(base_url=f"{host}/v1", api_key="unused", timeout=180, max_retries=0)
    same = oa.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    check(same.choices[0].message.content == whole.message.content,
          f"openai {same.choices[0].message.content!r} != ollama {whole.message.content!r}")

    # Generate: templated by default, raw when asked; streamed and not.
    gen = client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY)
    check(gen.done and gen.response, f"generate {gen}")
    gen_stream = "".join(p.response for p in client.generate(model=MODEL, prompt="Why is the sky blue?",
                                                              options=GREEDY, stream=True))
    check(gen_stream == gen.response, f"generate streamed {gen_stream!r} != {gen.response!r}")
    raw = client.generate(model=MODEL, prompt="The capital of France is", raw=True,
                          options={"temperature": 0, "num_predict": 8, "stop": ["."]})
    check(raw.response and "." not in raw.response, f"raw {raw}")
    loaded = client.generate(model=MODEL, prompt="")
    check(loaded.done and loaded.done_reason == "load", f"load {loaded}")
    out["generate"] = gen.response

    # Structured output with `format` (a schema) and tools.
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "country": {"type": "string", "maxLength": 30}},
              "required": ["city", "country"], "additionalProperties": False}
    js = client.chat(model=MODEL, messages=[{"role": "user", "content": "Name a big city and its country."}],
                     format=schema, options={"temperature": 0, "num_predict": 80})
    value = json.loads(js.message.content)
    jsonschema.validate(value, schema)
    out["format"] = value
    tool = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
    with_tools = client.chat(model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                             tools=[tool], options={"temperature": 0, "num_predict": 60})
    for call in with_tools.message.tool_calls or []:
        check(call.function.name == "get_weather" and isinstance(call.function.arguments, dict), f"call {call}")
    out["tool_calls"] = len(with_tools.message.tool_calls or [])

    # Embeddings: /api/embed (a list) and the older /api/embeddings (one prompt) agree.
    texts = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "The stock market fell sharply today."]
    embedded = client.embed(model=MODEL, input=texts)
    vectors = embedded.embeddings
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))
    check(len(vectors) == 3 and cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]), "embed similarity")
    single = client.embeddings(model=MODEL, prompt=texts[0]).embedding
    check(max(abs(x - y) for x, y in zip(single, vectors[0])) < 1e-6, "the same text, another vector")
    out["embed"] = len(single)

    # A model nobody serves: Ollama's 404.
    try:
        client.chat(model="no-such-model", messages=QUESTION)
        raise AssertionError("an unknown model answered")
    except ollama.ResponseError as e:
        check(e.status_code == 404 and "no-such-model" in e.error, f"error {e.status_code} {e.error}")
        out["unknown"] = e.status_code
    print(json.dumps(out))


if __name__ == "__main__":
    main()
