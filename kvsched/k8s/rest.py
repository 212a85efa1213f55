"""Raw JSON calls to the API server through an ApiClient: plain dicts in and out, no model classes.

The controller's writes (status patches, Deployment patches, ModelServing creates, evictions, events, the
Lease) all go through `call`, which returns the response body as a dict or raises `ApiError` with the HTTP
status and the apiserver's message. Called by: kvsched.k8s.writers, kvsched.k8s.leader, kvsched.cli (ApiError).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import urllib3
from kubernetes import client

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON = "application/json"


class ApiError(Exception):
    """A call answered with a non-2xx status (or no answer: status 0). `reason` is the Status reason
    (NotFound, Conflict, TooManyRequests ...) and `message` the apiserver's sentence."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def call(api: client.ApiClient, method: str, path: str, body: Any = None, *, content_type: str = JSON,
         query: Mapping[str, str | int | bool] | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """`method path` with a JSON body; the decoded response body (empty dict when none). Raises ApiError."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    method_, url, headers_, body_, post = api.param_serialize(
        method, path, query_params=list((query or {}).items()), header_params=headers, body=body,
        auth_settings=["BearerToken"])
    try:
        kwargs: dict[str, Any] = {}
        if timeout_s is not None:
            kwargs["_request_timeout"] = timeout_s
        response = api.call_api(method_, url, headers_, body_, post, **kwargs)
        data = response.read()  # type: ignore[no-untyped-call]
    except client.ApiException as e:  # connection-level failures the client reports with status 0
        raise ApiError(int(e.status or 0), str(e.reason or "Error"), str(e.body or e.reason)) from None
    except (OSError, urllib3.exceptions.HTTPError) as e:
        raise ApiError(0, type(e).__name__, str(e)) from None
    try:
        decoded = json.loads(data) if data else {}
    except ValueError:
        decoded = {}
    if not 200 <= response.status < 300:
        message = decoded.get("message") if isinstance(decoded, dict) else None
        reason = decoded.get("reason") if isinstance(decoded, dict) else None
        raise ApiError(response.status, str(reason or response.reason or "Error"),
                       str(message or (data[:300].decode(errors="replace") if data else "")))
    return decoded if isinstance(decoded, dict) else {}
