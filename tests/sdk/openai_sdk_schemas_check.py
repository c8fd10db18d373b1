"""Drives a running Switchyard with the schemas the stock OpenAI Python SDK builds from
pydantic models: a strict tool from openai.pydantic_function_tool and a response_format
from client.chat.completions.parse. The model has a nested model and Optional fields, so
the schemas carry $defs/$ref, anyOf with a null branch, const and
additionalProperties: false, which a provider such as Gemini only takes converted.

Usage: python3 openai_sdk_schemas_check.py BASE_URL CHAT_MODEL API_KEY

The chat model must answer with the last user text (the test emulators do). Exits
non-zero with the failing check. Run by tests/providers.rs.
"""

import sys
from typing import Literal, Optional

import openai
from pydantic import BaseModel, Field


class Address(BaseModel):
    city: str = Field(description="City name")
    country: Optional[str] = None


class Booking(BaseModel):
    """Book a table at a restaurant."""

    restaurant: str
    party_size: int = Field(description="How many people")
    address: Address
    billing: Optional[Address] = Field(default=None, description="Where to send the bill")
    notes: Optional[str] = None
    kind: Literal["dinner"] = "dinner"


base_url, chat_model, api_key = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)

# A strict tool: the schema is what makes it interesting, so check the SDK still builds it so
tool = openai.pydantic_function_tool(Booking, name="book_table")
parameters = tool["function"]["parameters"]
assert tool["function"]["strict"] is True, tool
assert "$defs" in parameters and parameters["additionalProperties"] is False, tool
assert parameters["properties"]["billing"]["anyOf"][1] == {"type": "null"}, tool
completion = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "user", "content": "Book a table for two at Chez Nous, Paris."}],
    tools=[tool],
)
assert completion.choices[0].message.content, completion

# response_format from the model; the answer echoes the user text, a valid booking
booking = Booking(restaurant="Chez Nous", party_size=2, address=Address(city="Paris"))
parsed = client.chat.completions.parse(
    model=chat_model,
    messages=[{"role": "user", "content": booking.model_dump_json()}],
    response_format=Booking,
)
assert parsed.choices[0].message.parsed == booking, parsed

print("ok")
