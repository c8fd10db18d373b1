"""Reads a stream the gateway resumed on another target with the stock OpenAI Python SDK:
the SDK must take the spliced stream (and the gateway's SSE comment before [DONE]) without
error, and the text it assembles must be the whole answer.

Usage: python3 openai_sdk_resumed_stream_check.py BASE_URL CHAT_MODEL API_KEY

The chat model must answer with the last user text, and its stream must break after its
first content and be resumed (tests/stream_resume.rs configures the mock so). Exits non-zero
with the failing check.
"""

import sys

import openai

base_url, model, key = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
prompt = "one two three four five six seven eight"
text = ""
ids = set()
for chunk in client.chat.completions.create(
    model=model, stream=True, messages=[{"role": "user", "content": prompt}]
):
    ids.add(chunk.id)
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
assert text == prompt, f"assembled {text!r}"
assert len(ids) == 1, f"one stream, ids {ids}"
print("ok")
