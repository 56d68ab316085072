"""Projects in the store, on real Redis: the deletion record that refuses new things, also to a
write that checked before the deletion began, and API keys losing a deleted project."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.domain.auth import Scope
from orchestrator.errors import NotFound, ProjectDeleting
from orchestrator.store import Stores
from orchestrator.store.hooks import Delivery
from orchestrator.store.projects import project_write


async def test_a_write_checked_before_the_deletion_began_is_not_applied(clean: Stores) -> None:
    """project_write checks, the deletion begins while the writes are queued, nothing lands."""
    project = await clean.projects.create("racing")
    probe = f"{clean.keys.prefix}probe"

    async def write_while_the_deletion_begins() -> None:
        async with project_write(clean.redis, clean.keys, project.id) as pipe:
            pipe.set(probe, "written")
            start = await clean.projects.begin_delete(project.id, by="other request")
            assert (start.found, start.active) == (True, ())

    with pytest.raises(ProjectDeleting) as raised:
        await write_while_the_deletion_begins()
    assert project.id in raised.value.message
    assert await clean.redis.get(probe) is None


async def test_a_write_after_the_deletion_began_is_refused_before_it_is_queued(
    clean: Stores,
) -> None:
    project = await clean.projects.create("going")
    await clean.projects.begin_delete(project.id, by="admin")
    with pytest.raises(ProjectDeleting):
        async with project_write(clean.redis, clean.keys, project.id):
            pytest.fail("the body must not run")
    with pytest.raises(ProjectDeleting):
        await clean.projects.update(project.id, name="renamed")
    assert await clean.projects.get(project.id) == dataclasses.replace(project, deleting=True)


async def test_begin_delete_of_a_missing_project_finds_nothing_and_marks_nothing(
    clean: Stores,
) -> None:
    assert not (await clean.projects.begin_delete("no-such-project", by="admin")).found
    assert not await clean.redis.exists(clean.keys.project_deletion("no-such-project"))


async def test_keys_limited_to_a_deleted_project_lose_it_and_the_ones_left_with_none_go(
    clean: Stores,
) -> None:
    doomed, other = await clean.projects.create("doomed"), await clean.projects.create("other")
    alone, _ = await clean.api_keys.create(
        "alone", frozenset({Scope.ADMIN}), frozenset({doomed.id})
    )
    both, _ = await clean.api_keys.create(
        "both", frozenset({Scope.DEVICES_READ}), frozenset({doomed.id, other.id})
    )
    elsewhere, _ = await clean.api_keys.create(
        "elsewhere", frozenset({Scope.DEVICES_READ}), frozenset({other.id})
    )
    everywhere, _ = await clean.api_keys.create("everywhere", frozenset({Scope.ADMIN}))

    assert await clean.api_keys.unscope(doomed.id) == (1, 1)

    assert await clean.api_keys.authenticate(alone) is None
    for key, projects in (
        (both, {other.id}),
        (elsewhere, {other.id}),
        (everywhere, set()),
    ):
        principal = await clean.api_keys.authenticate(key)
        assert principal is not None
        assert principal.projects == frozenset(projects)
    assert await clean.api_keys.count() == 3
    assert await clean.api_keys.unscope(doomed.id) == (0, 0)  # again: nothing more to do


async def test_no_notice_is_queued_for_a_subscription_deleted_meanwhile(clean: Stores) -> None:
    """The notifier read the subscriptions, then the subscription (or its project) went."""
    subscription = await clean.notifications.create(
        project_id="p-1", url="https://example.com/ota", events=[], secret="s", created_at="", by=""
    )
    await clean.notifications.delete(subscription)
    notice = ("msg_late", subscription.id, {"type": "started"})
    assert await clean.notifications.enqueue([notice]) == 0
    assert [key async for key in clean.redis.scan_iter(match=f"{clean.keys.prefix}*")] == []


async def test_no_delivery_is_accepted_for_a_hook_deleted_meanwhile(clean: Stores) -> None:
    """The route found the hook, then the hook (or its project) went."""
    hook = await clean.hooks.create(
        project_id="p-1", name="h", plan="name: x", secret="s", created_at="", by=""
    )
    await clean.hooks.delete(hook)
    delivery = Delivery("d-1", "", "github", "1.0", "fw.bin", "r-1", "accepted", "")
    with pytest.raises(NotFound):
        await clean.hooks.accept(hook, delivery, plan="name: x", actor="hook", body_digest="ab")
    assert [key async for key in clean.redis.scan_iter(match=f"{clean.keys.prefix}*")] == []
