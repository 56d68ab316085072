"""What the hook and notification routes share: list, read and delete a project's webhooks of
one kind, and list one's deliveries.

`/v2/projects/{project_id}/hooks[/{hook_id}[/deliveries]]` and
`/v2/projects/{project_id}/notifications[/{subscription_id}[/deliveries]]` are the same routes
over different records (store/webhooks.py): a `WebhookKind` says what differs, `add_routes`
writes the routes once. Each module keeps its own create route, whose body and checks differ.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel

from orchestrator.api.auth import InProject, in_project
from orchestrator.api.context import AppContext, Found
from orchestrator.api.errors import IN_PROJECT, error_responses
from orchestrator.api.listing import listed, one_page
from orchestrator.api.schemas import Done, Envelope
from orchestrator.domain.auth import Scope
from orchestrator.errors import NotFound
from orchestrator.store import Stores
from orchestrator.store.webhooks import Webhook, WebhookStore

log = structlog.get_logger(__name__)

W = TypeVar("W", bound=Webhook)
D = TypeVar("D")


@dataclass(frozen=True)
class WebhookKind(Generic[W, D]):
    """One kind of webhook as its routes show it."""

    noun: str  # in paths (plural), route names and actions: "hook"
    title: str  # in messages: "Hook" ("Hook found.", "Hooks listed.")
    called: str  # in a not-found message: "notification subscription"
    id_name: str  # the path parameter of one record: "hook_id"
    read: Scope
    write: Scope
    store: Callable[[Stores], WebhookStore[W, D]]
    model: type[BaseModel]  # a record as listed and read (no secret), in the OpenAPI document
    out: Callable[[AppContext, W], BaseModel]  # makes one
    delivery_model: type[BaseModel]
    delivery_out: Callable[[D], BaseModel]
    delete_doc: str
    deliveries_doc: str

    @property
    def path(self) -> str:
        """The path of the project's records."""
        return f"/v2/projects/{{project_id}}/{self.noun}s"

    async def find(self, context: AppContext, project_id: str, record_id: str) -> W:
        """The project's record `record_id`; NotFound naming the verb that lists them."""
        record = await self.store(context.stores).get(record_id)
        if record is None or record.project_id != project_id:
            raise NotFound(
                f"{self.called} {record_id} not found in project {project_id}; "
                f"ota {self.noun}s list"
            )
        return record


def add_routes(router: APIRouter, kind: WebhookKind[W, D]) -> None:
    """The kind's list, read, delete and deliveries routes, on `router`."""
    one = f"{kind.path}/{{{kind.id_name}}}"

    def found(scope: Scope) -> Callable[..., Awaitable[Found[W]]]:
        """A dependency: the record the path names, once the key may use its project."""

        async def dependency(
            project_id: str,  # also in_project's: named here, it stays first in the parameters
            # The path names the id the kind's way (hook_id, subscription_id).
            record_id: str = Path(alias=kind.id_name, description=f"The {kind.called}'s id"),
            at: InProject = Depends(in_project(scope)),
        ) -> Found[W]:
            record = await kind.find(at.context, project_id, record_id)
            return Found(at.context, at.principal, record)

        return dependency

    async def list_records(at: InProject = Depends(in_project(kind.read))) -> Response:
        records = await kind.store(at.context.stores).of_project(at.record.id)
        items = [kind.out(at.context, record) for record in records]
        return await listed(f"list {kind.noun}s", f"{kind.title}s listed.", one_page(items))

    async def get_record(at: Found[W] = Depends(found(kind.read))) -> Envelope[Any]:
        return Envelope(
            action=f"get {kind.noun}",
            message=f"{kind.title} found.",
            data=kind.out(at.context, at.record),
        )

    async def delete_record(at: Found[W] = Depends(found(kind.write))) -> Done:
        await kind.store(at.context.stores).delete(at.record)
        log.info(f"{kind.called} deleted", **{kind.id_name: at.record.id}, actor=at.principal.name)
        return Done(action=f"delete {kind.noun}")

    async def list_deliveries(at: Found[W] = Depends(found(kind.read))) -> Response:
        store = kind.store(at.context.stores)
        deliveries = await store.deliveries(at.record.id, limit=store.kept)
        items = [kind.delivery_out(delivery) for delivery in deliveries]
        return await listed(f"list {kind.noun} deliveries", "Deliveries listed.", one_page(items))

    list_records.__doc__ = f"The project's {kind.title.lower()}s (without their secrets)."
    get_record.__doc__ = f"One {kind.title.lower()} (without its secret)."
    delete_record.__doc__ = kind.delete_doc
    list_deliveries.__doc__ = kind.deliveries_doc
    responses = error_responses(*IN_PROJECT)
    # The answers' models, for the OpenAPI document (made at run time from the kind's models).
    many: Any = Envelope[list[kind.model]]  # type: ignore[name-defined]
    shown: Any = Envelope[kind.model]  # type: ignore[name-defined]
    deliveries: Any = Envelope[list[kind.delivery_model]]  # type: ignore[name-defined]
    for path, endpoint, method, name, model in (
        (kind.path, list_records, "GET", f"list_{kind.noun}s", many),
        (one, get_record, "GET", f"get_{kind.noun}", shown),
        (one, delete_record, "DELETE", f"delete_{kind.noun}", Done),
        (
            f"{one}/deliveries",
            list_deliveries,
            "GET",
            f"list_{kind.noun}_deliveries",
            deliveries,
        ),
    ):
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            name=name,
            response_model=model,
            responses=responses,
        )
