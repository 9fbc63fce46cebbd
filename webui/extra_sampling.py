"""The side panel's extra sampling parameters: a JSON object checked against a typed model.

What the box may add to a request: vLLM/OpenAI sampling parameters, nothing that changes what is
asked (messages, model, tools) or how the server reads it. Types are strict (a JSON ``true`` is
not a number, ``"20"`` is not an integer) and lists are capped as vLLM caps them, so a refusal
comes from the box, by name, before anything is sent.
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# vLLM 0.32 refuses more stop strings than VLLM_MAX_STOP_STRINGS (default 4; vllm/envs.py).
MAX_STOP_STRINGS = 4
MAX_LIST_ITEMS = 16  # stop_token_ids, bad_words
MAX_SAMPLES = 64


class ExtraSampling(BaseModel):
    """The parameters the box accepts; each left out is not sent."""

    model_config = ConfigDict(extra="forbid", strict=True)

    temperature: float | None = None  # these three override their controls
    top_p: float | None = None
    max_tokens: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    seed: int | None = None
    min_tokens: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stop_token_ids: Annotated[list[int], Field(max_length=MAX_LIST_ITEMS)] | None = None
    bad_words: Annotated[list[str], Field(max_length=MAX_LIST_ITEMS)] | None = None
    ignore_eos: bool | None = None
    n: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None  # the chat shows the first sample

    @field_validator("*", mode="before")
    @classmethod
    def _no_null(cls, value):
        """A key given as ``null`` is refused like any other wrong type (leave the key out)."""
        if value is None:
            raise ValueError("null")
        return value


EXTRA_SAMPLING = tuple(ExtraSampling.model_fields)


def parse_extra(text: str | None) -> dict:
    """The box's text as request parameters (``{}`` when empty), or a ValueError that names what
    is refused and why."""
    if not (text or "").strip():
        return {}
    try:
        params = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"Extra sampling parameters are not valid JSON: {err}") from err
    if not isinstance(params, dict):
        raise ValueError('Extra sampling parameters must be a JSON object, like {"top_k": 20}.')
    try:
        return ExtraSampling.model_validate(params).model_dump(exclude_unset=True)
    except ValidationError as err:
        raise ValueError(_refusal(err, list(params))) from None


def _refusal(err: ValidationError, order: list[str]) -> str:
    """One sentence for the first refused key, in the order the user wrote them."""
    errors = err.errors()
    key = min((str(e["loc"][0]) for e in errors), key=order.index)
    kinds = {e["type"]: e for e in errors if str(e["loc"][0]) == key}
    if "extra_forbidden" in kinds:
        allowed = ", ".join(EXTRA_SAMPLING)
        return f"Extra sampling parameters: {key!r} is not allowed here; allowed: {allowed}."
    if "too_long" in kinds:
        most = kinds["too_long"]["ctx"]["max_length"]
        return f"Extra sampling parameters: {key!r} takes up to {most} items."
    if kinds.keys() & {"greater_than_equal", "less_than_equal"}:
        return f"Extra sampling parameters: {key!r} must be between 1 and {MAX_SAMPLES}."
    return f"Extra sampling parameters: {key!r} has the wrong type of value."
