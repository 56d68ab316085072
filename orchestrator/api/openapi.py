"""The OpenAPI document the app serves at /openapi.json, finished to say what the routes do.

FastAPI writes most of it from the routes. This adds what it cannot know: the house error
body in place of its 422, the 400 every operation answers to a query parameter it does not
list (api/query_params.py), that a query parameter is a string or absent (never null), and
the rollout plan's JSON Schema that the YAML body refers to.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from orchestrator.api.errors import ErrorBody, error_responses
from orchestrator.domain.plans import Plan

PLAN_SCHEMA_NAME = "RolloutPlan"


def build_document(app: FastAPI) -> dict[str, Any]:
    """The finished document for `app`."""
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema(
        ref_template="#/components/schemas/{model}", mode="serialization"
    )
    components.update(components["ErrorBody"].pop("$defs", {}))
    # The API never answers 422: each route documents its 400 with ErrorBody.
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for item in document.get("paths", {}).values():
        for operation in item.values():
            operation.get("responses", {}).pop("422", None)
            operation.setdefault("responses", {}).setdefault("400", error_responses(400)[400])
            for parameter in operation.get("parameters", []):
                _never_null(parameter)
    plan = Plan.model_json_schema(
        by_alias=True, mode="validation", ref_template="#/components/schemas/{model}"
    )
    components.update(plan.pop("$defs", {}))
    components[PLAN_SCHEMA_NAME] = {**plan, "title": "OTA rollout plan"}
    return document


def _never_null(parameter: dict[str, Any]) -> None:
    """`anyOf: [X, null]` of an optional parameter becomes X: a query is absent, not null."""
    schema = parameter.get("schema", {})
    choices = schema.get("anyOf")
    if not isinstance(choices, list):
        return
    kept = [choice for choice in choices if choice != {"type": "null"}]
    if len(kept) == 1 and len(kept) < len(choices):
        del schema["anyOf"]
        parameter["schema"] = {**kept[0], **schema}
