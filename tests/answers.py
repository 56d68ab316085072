"""Reading the API's answers in tests: the envelope checked, then its `data`."""

from __future__ import annotations

from typing import Any

import httpx


def data_of(response: httpx.Response, status: int = 200) -> Any:
    """The `data` of an answer with `status`, once it is seen to be the envelope:
    `{success: true, status, action, message, data}`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is True, body
    assert body["status"] == status, body
    assert body["action"], body
    assert body["message"], body
    return body["data"]
