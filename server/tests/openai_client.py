"""Drives a ferry-server with the official `openai` Python package, unchanged."""
import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused")

r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8)
assert r.choices[0].message.role == "assistant", r
assert r.usage.completion_tokens >= 1, r
print("chat:", repr(r.choices[0].message.content), r.usage.completion_tokens, "tokens")

parts = []
stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                        max_tokens=8, stream=True, stream_options={"include_usage": True},
                                        extra_body={"ignore_eos": True})
usage = None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        parts.append(c.delta.content or "")
assert usage is not None and usage.completion_tokens == 8, usage
print("stream:", repr("".join(parts)))

schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"], "additionalProperties": False}
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "json"}], max_tokens=100,
                                   response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
value = json.loads(r.choices[0].message.content)
assert isinstance(value["a"], bool), value
print("json_schema:", value)

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=8)
    raise SystemExit("an empty messages list was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["code"] == "invalid_request", e.body
    print("bad request:", e.body["message"])

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("an unknown model was accepted")
except openai.NotFoundError as e:
    print("unknown model:", e.body["message"])
print("openai client: all checks passed")
