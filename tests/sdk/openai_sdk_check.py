"""Drives a running Switchyard with the stock OpenAI Python SDK.

Usage: python3 openai_sdk_check.py BASE_URL CHAT_MODEL EMBEDDING_MODEL API_KEY

Exits non-zero (with the failing check) if anything the SDK sees is not what the
OpenAI API would give it. Run by tests/openai_sdk.rs.
"""

import sys

import openai

base_url, chat_model, embedding_model, api_key = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
question = "the quick brown fox"

# chat.completions.create, not streamed
completion = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
)
assert completion.object == "chat.completion", completion
assert completion.choices[0].message.role == "assistant", completion
assert completion.choices[0].message.content, completion
assert completion.choices[0].finish_reason == "stop", completion
assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
reply = completion.choices[0].message.content

# chat.completions.create, streamed: the same answer, chunk by chunk
stream = client.chat.completions.create(
    model=chat_model, stream=True, messages=[{"role": "user", "content": question}]
)
chunks = list(stream)
assert len(chunks) > 2, chunks
assert all(c.object == "chat.completion.chunk" for c in chunks), chunks
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed, chunks
assert chunks[-1].choices[0].finish_reason == "stop", chunks[-1]
assert all(c.usage is None for c in chunks), "usage chunk not asked for"

# streamed with usage requested
chunks = list(
    client.chat.completions.create(
        model=chat_model,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": question}],
    )
)
assert chunks[-1].usage is not None and chunks[-1].choices == [], chunks[-1]

# models.list and models.retrieve
ids = [m.id for m in client.models.list()]
assert chat_model in ids and embedding_model in ids, ids
assert client.models.retrieve(chat_model).id == chat_model

# embeddings.create: the SDK asks for base64 by default and decodes it
embedding = client.embeddings.create(model=embedding_model, input=["hello", "world"])
assert len(embedding.data) == 2, embedding
assert len(embedding.data[0].embedding) > 0, embedding
assert isinstance(embedding.data[0].embedding[0], float), embedding
floats = client.embeddings.create(
    model=embedding_model, input="hello", encoding_format="float", dimensions=8
)
assert len(floats.data[0].embedding) in (3, 8), floats

# errors become the SDK's typed exceptions
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model must fail")
except openai.NotFoundError as error:
    assert error.status_code == 404
    assert error.code == "model_not_found", error.body

try:
    client.chat.completions.create(model=chat_model, messages=[])
    raise AssertionError("empty messages must fail")
except openai.BadRequestError as error:
    assert error.status_code == 400

print("ok", reply)
