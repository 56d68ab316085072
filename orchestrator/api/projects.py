"""`/v2/projects`: create, read, list, update and delete projects (docs.qubitro.com's shapes)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import APIRouter, Depends, Response

from orchestrator.api.auth import InProject, current_principal, in_project, require
from orchestrator.api.bodies import JSONRoute
from orchestrator.api.context import AppContext, get_context
from orchestrator.api.errors import IN_PROJECT, KEYED, SCOPED, error_responses
from orchestrator.api.listing import loaded, streamed
from orchestrator.api.project_deletion import delete_project as delete_everything
from orchestrator.api.schemas import (
    Done,
    ProjectCreate,
    ProjectEnvelope,
    ProjectListEnvelope,
    ProjectOut,
    ProjectPatch,
)
from orchestrator.domain.auth import Principal, Scope
from orchestrator.domain.projects import validate_project_tags
from orchestrator.errors import Forbidden, NotFound
from orchestrator.store.projects import Project

router = APIRouter(tags=["projects"], route_class=JSONRoute)


def project_out(project: Project) -> ProjectOut:
    """The project as docs.qubitro.com shows it, with `created` for early Node.js SDK versions."""
    return ProjectOut(
        id=project.id,
        name=project.name,
        description=project.description,
        tags=project.tags,
        created_at=project.created_at,
        created=project.created_at,
        deleting=project.deleting,
    )


@router.post("/v2/projects", status_code=201, responses=error_responses(400, *SCOPED))
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
    tags = validate_project_tags(body.tags)
    project = await context.stores.projects.create(body.name, body.description, tags)
    return ProjectEnvelope(
        status=201,
        action="create project",
        message="Project created successfully.",
        data=project_out(project),
    )


@router.get("/v2/projects", response_model=ProjectListEnvelope, responses=error_responses(*KEYED))
async def list_projects(
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(current_principal),
) -> Response:
    """The projects this API key may use, newest first."""
    store = context.stores.projects

    async def load(ids: Sequence[str]) -> list[ProjectOut]:
        found = await asyncio.gather(*(store.get(project_id) for project_id in ids))
        return [project_out(project) for project in found if project is not None]

    usable = [project_id for project_id in await store.ids() if principal.can_access(project_id)]
    envelope = ProjectListEnvelope(
        status=200, action="list projects", message="Projects listed.", data=[]
    )
    return await streamed(envelope, "data", loaded(usable, load))


@router.get("/v2/projects/{project_id}", name="get_project", responses=error_responses(*IN_PROJECT))
async def get_project(at: InProject = Depends(in_project(deleting=True))) -> ProjectEnvelope:
    """One project (also while it is being deleted: `deleting` is then true)."""
    return ProjectEnvelope(
        status=200, action="get project", message="Project found.", data=project_out(at.record)
    )


@router.patch("/v2/projects/{project_id}", responses=error_responses(400, *IN_PROJECT))
async def update_project(
    body: ProjectPatch, at: InProject = Depends(in_project(Scope.ADMIN))
) -> ProjectEnvelope:
    """Change name, description or tags; what the body leaves out (or sends null) stays."""
    project_id = at.record.id
    project = await at.context.stores.projects.update(
        project_id,
        name=body.name,
        description=body.description,
        tags=validate_project_tags(body.tags) if body.tags is not None else None,
    )
    if project is None:
        raise NotFound(f"project {project_id} not found")
    return ProjectEnvelope(
        status=200, action="update project", message="Project updated.", data=project_out(project)
    )


@router.delete("/v2/projects/{project_id}", responses=error_responses(*IN_PROJECT))
async def delete_project(at: InProject = Depends(in_project(Scope.ADMIN, deleting=True))) -> Done:
    """Delete the project with its devices (and their broker accounts and download keys),
    files, hooks, notification subscriptions and finished rollouts; 409 naming the rollouts
    still active. Keys limited to this project alone are deleted, others lose it.

    A deletion cut short (503: the broker or Redis away) is finished by repeating the DELETE;
    meanwhile nothing new can be made in the project (409).
    """
    await delete_everything(at.context, at.record.id, by=at.principal.name)
    return Done(action="delete project")
