"""The hot routes' plumbing: a JSON body checked by its model, a model answered as JSON.

The reservation routes run once per LLM call, so they skip FastAPI's per-request
dependency solving and response-model validation (about half of the API's CPU per
request, measured with benchmarks/api.py): they take the Request, check the body with
pydantic-core in one pass, and answer the model's JSON. Their OpenAPI entries come from
`body_schema` and `responses`, so /openapi.json still documents them.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from tokenquota.schemas.codec import duplicate_key_reason, note_repeats, repeated_keys

__all__ = ["body_schema", "json_body", "json_response"]

_M = TypeVar("_M", bound=BaseModel)


async def json_body(request: Request, model: type[_M]) -> _M:
    """The request's JSON body as `model`; a 422 (the API's usual shape) when it is not,
    or when it gives a key twice (JSON parsers disagree on which one counts)."""
    body = await request.body()
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None
    # An object of k members has k - 1 commas: no more than that, no key twice.
    if body.count(b",") >= len(parsed.model_fields_set):
        try:
            repeated = repeated_keys(json.loads(body, object_pairs_hook=note_repeats))
        except (ValueError, RecursionError):  # pydantic-core read it: not expected
            repeated = []
        if repeated:
            raise RequestValidationError(
                [
                    {"loc": ("body", *path.split(".")), "msg": duplicate_key_reason(times),
                     "type": "value_error"}
                    for path, times in repeated
                ]
            )  # fmt: skip
    return parsed


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """`model` as a JSON response."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a required JSON body of `model` (a flat model)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
