"""The JSON wire: reading request bodies, writing answers, and the status of each error.

Shared by the Quart routes and the worker-protocol fast path, so both check a
body the same way (malformed 400, invalid 422) and answer an error with the
same status and `{"error": ...}` text.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from actors.errors import (
    Conflict,
    Invalid,
    LimitExceeded,
    NotFound,
    Unavailable,
    WorkflowGraphError,
)
from actors.spec import DefinitionError

M = TypeVar("M", bound=BaseModel)

# Bodies: nesting past this is refused (free-form metadata must stay serializable),
# and so are integers a JSON (IEEE double) client cannot hold exactly.
MAX_JSON_DEPTH = 64
MAX_JSON_INT = 2**53 - 1


class BadRequest(Exception):
    """Malformed JSON or query parameters (400)."""


_ADAPTERS: dict[Any, TypeAdapter] = {}


def dump(value: Any) -> str:
    """A model, a list of models, None, or a plain dict as JSON text."""
    if isinstance(value, BaseModel):
        body = value.model_dump_json()
    elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
        kind = type(value[0])
        adapter = _ADAPTERS.get(kind) or _ADAPTERS.setdefault(kind, TypeAdapter(list[kind]))  # type: ignore[valid-type]
        body = adapter.dump_json(value).decode()
    else:
        body = json.dumps(value)
    return body


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "invalid request: " + "; ".join(parts)


def _refuse_constant(name: str):
    raise BadRequest(f"malformed JSON: {name} is not a JSON value")


def _check_values(data: Any) -> None:
    """422 for a body nested deeper than MAX_JSON_DEPTH, with a number clients cannot
    hold, or with text that is not Unicode (an escaped lone surrogate, `"\\ud800"`).

    Free-form fields (`metadata`, visualizer fields) are stored and echoed: a value
    that could not be serialized back, or read exactly by a JavaScript client,
    must not get in.
    """
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise Invalid(f"limit max_json_depth ({MAX_JSON_DEPTH}) exceeded")
        if isinstance(value, dict):
            for key in value:
                _check_text(key)
            items = value.values()
        else:
            items = value
        for item in items:
            if isinstance(item, dict | list):
                pending.append((item, depth + 1))
            elif isinstance(item, str):
                _check_text(item)
            elif isinstance(item, bool):
                continue
            elif isinstance(item, float) and not math.isfinite(item):
                raise Invalid("number out of range (too large for a JSON double)")
            elif isinstance(item, int) and abs(item) > MAX_JSON_INT:
                raise Invalid(f"integer out of range (more than {MAX_JSON_INT} in size)")


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid("text with an unpaired surrogate (not Unicode)") from None


def parse_body(raw: bytes, model: type[M], *, optional: bool = False) -> M:
    """Parse and validate a JSON body; BadRequest (400) when malformed, Invalid (422)."""
    if not raw.strip():
        if optional:
            return model()
        raise BadRequest("request body must be a JSON object")
    try:
        # Strict UTF-8 (bytes json.loads would let encoded surrogates through).
        data = json.loads(raw.decode("utf-8-sig"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise Invalid("request body must be a JSON object")
    _check_values(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(_describe(exc)) from None
    except RecursionError:
        raise Invalid("request body nested too deeply") from None


def error_answer(exc: BaseException) -> tuple[int, str] | None:
    """The status and message for a request error, or None for an unexpected one."""
    if isinstance(exc, BadRequest):
        return 400, str(exc)
    if isinstance(exc, NotFound):
        return 404, str(exc)
    if isinstance(exc, Conflict):
        return 409, str(exc)
    if isinstance(exc, Unavailable):
        return 503, str(exc)
    if isinstance(exc, LimitExceeded):
        return (413 if exc.size else 422), str(exc)
    if isinstance(exc, WorkflowGraphError):
        return 422, str(exc)
    if isinstance(exc, DefinitionError):
        return 422, f"invalid workflow: {exc}"
    return None


def body_too_large(limit: int) -> str:
    """The 413 message, the same from the Quart routes and the fast path."""
    return f"request body exceeds the limit max_body_bytes ({limit})"


def error_body(message: str) -> str:
    return json.dumps({"error": message})


async def send_json(send, status: int, body: str, headers: list[tuple[bytes, bytes]]) -> None:
    """Answer an ASGI request with a JSON body, outside Quart (the gate, the fast path)."""
    payload = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
