"""Projects through the API: `ota projects list|update|delete` (`create` is offline, admin.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.api.schemas import ProjectOut
from orchestrator.cli.admin import projects_app
from orchestrator.cli.output import console, given, print_answer, print_json, table
from orchestrator.cli.server import Json, Server, connected, run
from orchestrator.errors import InvalidInput

ProjectId = Annotated[str, typer.Argument(help="The project's id")]


@connected(project=False)
def list_projects(target: Server, as_json: Json = False) -> None:
    """The projects the API key may use, newest first (through the API)."""
    projects = run(lambda api: api.projects(), target)
    if as_json:
        print_json(projects)
        return
    listed = table(("id", "name", "tags", "created", "description"))
    for project in projects:
        listed.add_row(*_row(project))
    console().print(listed)
    typer.echo(f"{len(projects)} projects")


def _row(project: ProjectOut) -> tuple[str, ...]:
    name = f"{project.name} (deleting)" if project.deleting else project.name
    return project.id, name, ",".join(project.tags), project.created_at, project.description


@connected(project=False)
def update_project(
    target: Server,
    project_id: ProjectId,
    name: Annotated[str | None, typer.Option(help="A new name")] = None,
    description: Annotated[str | None, typer.Option(help="A new description")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="The project's tags from now on (repeatable)")
    ] = None,
    no_tags: Annotated[bool, typer.Option("--no-tags", help="Remove every tag")] = False,
    as_json: Json = False,
) -> None:
    """Change a project's name, description or tags (through the API); the rest is kept."""
    if tag and no_tags:
        raise InvalidInput("give --tag or --no-tags, not both")
    changes = given(name=name, description=description, tags=tag)
    if no_tags:
        changes["tags"] = []
    if not changes:
        raise InvalidInput("nothing to change: give --name, --description, --tag or --no-tags")
    project = run(lambda api: api.update_project(project_id, **changes), target)
    print_answer(project, as_json=as_json, line=f"updated {project.id}: {project.name}")


@connected(project=False)
def delete_project(
    target: Server,
    project_id: ProjectId,
    yes: Annotated[
        bool, typer.Option("--yes", help="Delete without asking (its devices, files, rollouts)")
    ] = False,
) -> None:
    """Delete a project with everything in it: devices, files, rollouts, hooks (through the API).

    A project with a rollout still active is refused (abort it first); a deletion cut short is
    finished by running it again. Without --yes it asks on a terminal, and refuses elsewhere.
    """
    if not yes:
        if not typer.get_text_stream("stdin").isatty():
            raise InvalidInput(f"deleting {project_id} needs --yes when not asked on a terminal")
        typer.confirm(
            f"Delete project {project_id} with its devices, files and rollouts?", abort=True
        )
    run(lambda api: api.delete_project(project_id), target)
    typer.echo(f"deleted {project_id}")


def register(app: typer.Typer) -> None:
    """Add these verbs to `ota projects` (the group admin.py adds to the app)."""
    projects_app.command("list")(list_projects)
    projects_app.command("update")(update_project)
    projects_app.command("delete")(delete_project)
