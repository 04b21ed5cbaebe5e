"""Tools, structured output and the sampling fields through a QUIVer gateway, with the official
`openai` Python client, checked with the `jsonschema` package.

Called by crates/quiver-cli/tests/gateway.rs with the gateway's base URL in OPENAI_BASE_URL.
Prints one JSON object with what it saw on its last line; any failed check raises (non-zero
exit) with the reason.
"""

import json
import os

import jsonschema
import openai

MODEL = "smollm2-135m"

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The local time in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "id": {"type": "string", "format": "uuid"},
        "born": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"enum": ["friend", "colleague", "family"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "height": {"anyOf": [{"type": "number"}, {"type": "string", "maxLength": 10}]},
    },
    "required": ["name", "age", "id", "born", "tags", "address", "height"],
    "additionalProperties": False,
}


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def bad_request(call, says):
    try:
        call()
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"status {e.status_code}")
        check(says in str(e), f"the 400 does not say `{says}`: {e}")
        return e.code
    raise AssertionError(f"no 400 (expected one saying `{says}`)")


def main():
    client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="unused", timeout=180, max_retries=0)
    out = {}
    question = [{"role": "user", "content": "How warm is it in Paris?"}]

    # A forced call of a named function: arguments that validate, finish_reason tool_calls.
    forced = {"type": "function", "function": {"name": "get_weather"}}
    chat = client.chat.completions.create(model=MODEL, messages=question, tools=TOOLS, tool_choice=forced,
                                          temperature=0, max_tokens=120)
    choice = chat.choices[0]
    check(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason}")
    calls = choice.message.tool_calls
    check(calls and len(calls) == 1, f"tool_calls {calls}")
    call = calls[0]
    check(call.type == "function" and call.function.name == "get_weather", f"call {call}")
    check(call.id.startswith("call_"), f"id {call.id}")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER)
    out["forced"] = args

    # The follow-up turn: the assistant's call and the tool's result in the history.
    follow = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=40, tools=TOOLS,
        messages=question + [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "unit": "celsius"})},
        ])
    answer = follow.choices[0]
    check(answer.message.content or answer.message.tool_calls, f"follow-up {answer}")
    out["follow_up"] = answer.finish_reason

    # A streamed call, `required`: reassembled from index, id, name, then argument fragments.
    stream = client.chat.completions.create(model=MODEL, messages=question, tools=TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, temperature=0, max_tokens=120, stream=True)
    parts, finish, content = {}, None, ""
    fragments = 0
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for d in delta.tool_calls or []:
            slot = parts.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id:
                slot["id"] = d.id
            if d.function and d.function.name:
                slot["name"] = d.function.name
            if d.function and d.function.arguments:
                slot["arguments"] += d.function.arguments
                fragments += 1
        finish = chunk.choices[0].finish_reason or finish
    check(finish == "tool_calls", f"streamed finish_reason {finish}")
    check(list(parts) == [0], f"streamed calls {parts}")
    streamed = parts[0]
    check(streamed["id"] and streamed["name"] in ("get_weather", "get_time"), f"streamed call {streamed}")
    schema = WEATHER if streamed["name"] == "get_weather" else TOOLS[1]["function"]["parameters"]
    jsonschema.validate(json.loads(streamed["arguments"]), schema)
    check(content == "", f"content beside a forced call: {content!r}")
    out["streamed"] = {"name": streamed["name"], "fragments": fragments}

    # Structured output: a schema with nesting, enums, anyOf, formats, a pattern; and any object.
    person = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe my friend Ann as JSON."}], temperature=0,
        max_tokens=300, response_format={"type": "json_schema",
                                         "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    check(person.choices[0].finish_reason == "stop", f"person finish {person.choices[0].finish_reason}")
    value = json.loads(person.choices[0].message.content)
    jsonschema.validate(value, PERSON, format_checker=jsonschema.FormatChecker())
    out["person"] = value
    obj = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2 + 2? Answer in JSON."}], temperature=0,
        max_tokens=200, response_format={"type": "json_object"})
    check(isinstance(json.loads(obj.choices[0].message.content), dict), f"json_object {obj.choices[0].message}")

    # Usage in the last chunk of a stream, with stop as a list and max_completion_tokens.
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from one to ten."}], temperature=0,
        max_completion_tokens=16, stop=["ten", "10"], stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    check(last.choices == [] and last.usage and last.usage.completion_tokens > 0, f"last chunk {last}")
    check(all(c.usage is None for c in chunks[:-1]), "usage before the last chunk")
    out["usage_chunk"] = last.usage.completion_tokens

    # Sampled with a seed: the same seed gives the same text; n gives several choices.
    def sampled(seed):
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a short story."}], temperature=0.9,
            seed=seed, max_tokens=24, presence_penalty=0.5, frequency_penalty=0.5)
    check(sampled(7).choices[0].message.content == sampled(7).choices[0].message.content, "seeded sampling")
    several = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}], temperature=1.0, n=3, seed=11,
        max_tokens=8)
    check([c.index for c in several.choices] == [0, 1, 2], f"choices {several.choices}")
    check(several.usage.completion_tokens == sum(1 for _ in several.choices) * 8
          or several.usage.completion_tokens > 0, f"usage {several.usage}")
    out["n"] = len(several.choices)

    # Log probabilities: one per generated token, the greedy choice the most likely, in both APIs.
    lp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a colour."}],
                                        temperature=0, max_tokens=8, logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content
    check(len(content) == lp.usage.completion_tokens, f"{len(content)} log probabilities, {lp.usage}")
    check("".join(t.token for t in content) == lp.choices[0].message.content, "tokens spell the answer")
    for t in content:
        check(t.logprob <= 0 and len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token, f"{t}")
    legacy = client.completions.create(model=MODEL, prompt="The sky is", temperature=0, max_tokens=5, logprobs=2)
    check(len(legacy.choices[0].logprobs.tokens) == legacy.usage.completion_tokens, f"{legacy.choices[0].logprobs}")
    out["logprobs"] = len(content)

    # In `auto`, an answer that is not a call is text.
    auto = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=24, tools=TOOLS,
                                          messages=[{"role": "user", "content": "Say hello to me."}])
    a = auto.choices[0]
    check((a.finish_reason == "tool_calls") == bool(a.message.tool_calls), f"auto {a}")
    out["auto"] = a.finish_reason

    # Embeddings (the client asks for base64 by default), then floats: similar texts are closer,
    # the same text gives the same vector.
    texts = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "The stock market fell sharply today."]
    emb = client.embeddings.create(model=MODEL, input=texts)
    vectors = [d.embedding for d in sorted(emb.data, key=lambda d: d.index)]
    check(len(vectors) == 3 and len(vectors[0]) > 100, f"embeddings {len(vectors)}")
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))
    check(cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]), "similar texts are not closer")
    check(emb.usage.prompt_tokens > 0, f"usage {emb.usage}")
    one = client.embeddings.create(model=MODEL, input=texts[1], encoding_format="float").data[0].embedding
    check(max(abs(x - y) for x, y in zip(one, vectors[1])) < 1e-6, "the same text, another vector")
    out["embedding_dims"] = len(one)
    bad_request(lambda: client.embeddings.create(model=MODEL, input=[[1, 2, 3]]), "token arrays")

    # What cannot be served is a 400 in OpenAI's shape.
    out["invalid_schema"] = bad_request(lambda: client.chat.completions.create(
        model=MODEL, messages=question, max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}),
        "grammar")
    huge = {"type": "object", "properties": {f"property_number_{i}": {"type": "string"} for i in range(3000)}}
    bad_request(lambda: client.chat.completions.create(
        model=MODEL, messages=question, max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": huge}}), "bytes")
    # Under the schema's size limit, over the grammar's: integer ranges expand into digit rules.
    ranges = {"type": "object", "properties": {
        f"p{i}": {"type": "integer", "minimum": -123456789, "maximum": 987654321} for i in range(400)}}
    bad_request(lambda: client.chat.completions.create(
        model=MODEL, messages=question, max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": ranges}}), "grammar of")
    bad_request(lambda: client.chat.completions.create(
        model=MODEL, messages=question, tools=TOOLS, max_tokens=8,
        tool_choice={"type": "function", "function": {"name": "launch_rockets"}}), "launch_rockets")
    bad_request(lambda: client.chat.completions.create(
        model=MODEL, max_tokens=8,
        messages=question + [{"role": "tool", "tool_call_id": "call_nobody", "content": "42"}]), "call_nobody")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
