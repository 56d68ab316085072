"""The error tree says what went wrong; the API alone decides the HTTP status of each kind."""

from __future__ import annotations

import inspect

import pytest

from orchestrator import errors
from orchestrator.api.errors import status_of
from orchestrator.domain.plans import PlanError
from orchestrator.domain.states import InvalidTransition

KINDS = [
    kind
    for _, kind in inspect.getmembers(errors, inspect.isclass)
    if issubclass(kind, errors.OrchestratorError)
]


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_no_error_of_the_tree_carries_a_status(kind: type[errors.OrchestratorError]) -> None:
    assert "status" not in vars(kind)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidInput("x"), 400),
        (PlanError([]), 400),
        (errors.Unauthorized("x"), 401),
        (errors.Forbidden("x"), 403),
        (errors.NotFound("x"), 404),
        (errors.Conflict("x"), 409),
        (InvalidTransition("x"), 409),
        (errors.PayloadTooLarge("x"), 413),
        (errors.RangeNotSatisfiable("x", size=3), 416),
        (errors.StoreUnavailable("x"), 503),
        (errors.StoreRefused("x"), 503),
        (errors.TransportUnavailable("x"), 503),
        (errors.OrchestratorError("x"), 500),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_the_api_maps_each_kind_and_its_subclasses_to_a_status(
    error: errors.OrchestratorError, status: int
) -> None:
    assert status_of(error) == status
