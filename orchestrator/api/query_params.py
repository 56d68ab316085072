"""Query parameters a route does not take are refused (400 naming them), never ignored.

A script that filters devices before acting on them must not act on all of them because a
misspelt filter (`?tags=` for `?tag=`) was dropped. What a route takes is what its OpenAPI
operation documents as query parameters, so the document stays the truth and a new route
is checked as soon as it is added. The check is an app-wide dependency, so it runs before
the route's own parameters, credentials and handler: nothing is looked up or done. The app's
documentation pages (`/docs`, its OAuth redirect, `/openapi.json`) are not API routes and take
what they like.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from orchestrator.errors import InvalidInput

_ACCEPTED = "query_parameters"  # app.state: {(METHOD, path template): names}


async def refuse_unknown_query(request: Request) -> None:
    """InvalidInput naming every query parameter the matched route does not document."""
    if not request.query_params:
        return
    path = getattr(request.scope.get("route"), "path", "")
    accepted = _accepted(request.app, request.method, path)
    unknown = [name for name in request.query_params if name not in accepted]
    if not unknown:
        return
    names = ", ".join(accepted)
    said = f"accepts {names}" if names else "takes no query parameters"
    noun = "parameter" if len(unknown) == 1 else "parameters"
    raise InvalidInput(
        f"unknown query {noun} {', '.join(map(repr, unknown))}; {request.method} {path} {said}",
        errors=[
            {
                "loc": f"query.{name}",
                "msg": "unknown query parameter; "
                + (f"accepted: {names}" if names else "none accepted"),
            }
            for name in unknown
        ],
    )


def _accepted(app: FastAPI, method: str, path: str) -> tuple[str, ...]:
    """The query parameters the document gives the operation (none for an undocumented one)."""
    table: dict[tuple[str, str], tuple[str, ...]] | None = getattr(app.state, _ACCEPTED, None)
    if table is None:
        table = {
            (verb.upper(), template): tuple(
                parameter["name"]
                for parameter in operation.get("parameters", [])
                if parameter.get("in") == "query"
            )
            for template, item in app.openapi().get("paths", {}).items()
            for verb, operation in item.items()
        }
        setattr(app.state, _ACCEPTED, table)
    return table.get((method, path), ())
