"""`/v2/projects`: create and read projects."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import APIRouter, Depends, Response

from orchestrator.api.auth import check_project, current_principal, require
from orchestrator.api.bodies import JSONRoute
from orchestrator.api.context import AppContext, get_context
from orchestrator.api.errors import IN_PROJECT, KEYED, SCOPED, error_responses
from orchestrator.api.listing import loaded, streamed
from orchestrator.api.schemas import ProjectCreate, ProjectEnvelope, ProjectListEnvelope, ProjectOut
from orchestrator.domain.auth import Principal, Scope
from orchestrator.errors import Forbidden, NotFound

router = APIRouter(tags=["projects"], route_class=JSONRoute)


@router.post(
    "/v2/projects",
    name="create_project",
    status_code=201,
    responses=error_responses(400, *SCOPED),
)
async def create_project(
    body: ProjectCreate,
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(require(Scope.ADMIN)),
) -> ProjectEnvelope:
    """Create a project (admin keys not limited to projects only)."""
    if principal.projects:
        raise Forbidden(
            "this API key is limited to some projects and cannot create new ones; "
            "use an admin key without --project"
        )
    project = await context.stores.projects.create(body.name)
    return ProjectEnvelope(
        status=201,
        action="create project",
        message="Project created successfully.",
        data=ProjectOut(id=project.id, name=project.name, created_at=project.created_at),
    )


@router.get(
    "/v2/projects",
    name="list_projects",
    response_model=ProjectListEnvelope,
    responses=error_responses(*KEYED),
)
async def list_projects(
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(current_principal),
) -> Response:
    """The projects this API key may use."""
    store = context.stores.projects

    async def load(ids: Sequence[str]) -> list[ProjectOut]:
        found = await asyncio.gather(*(store.get(project_id) for project_id in ids))
        return [ProjectOut(**vars(project)) for project in found if project is not None]

    usable = [project_id for project_id in await store.ids() if principal.can_access(project_id)]
    envelope = ProjectListEnvelope(
        status=200, action="list projects", message="Projects listed.", data=[]
    )
    return await streamed(envelope, "data", loaded(usable, load))


@router.get("/v2/projects/{project_id}", name="get_project", responses=error_responses(*IN_PROJECT))
async def get_project(
    project_id: str,
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(current_principal),
) -> ProjectEnvelope:
    """One project."""
    await check_project(context, principal, project_id)
    project = await context.stores.projects.get(project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    return ProjectEnvelope(
        status=200, action="get project", message="Project found.", data=ProjectOut(**vars(project))
    )
