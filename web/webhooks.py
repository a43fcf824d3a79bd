"""Routes that start runs from other systems: GitHub's webhook and a generic signed dispatch.

They prove themselves with an HMAC signature of the raw body
(`X-Hub-Signature-256: sha256=<hex>`), not a bearer token (GitHub cannot send
one), so `web.auth` lets them through (its `SIGNED_RULES`). With no secret configured a route
answers 404, so it is never open by accident; a missing or wrong signature is
401 before the body is parsed, and starts nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel
from quart import Blueprint, Response, request
from quart_schema import document_headers, document_request, document_response

from actors import Runtime
from actors.models import ErrorBody, RunAccepted, RunRequest
from actors.webhooks import SIGNATURE_HEADER, dispatch_event, read_delivery, signature_matches

from .wire import BadRequest, dump, error_body, parse_body

GITHUB_RULE = "/api/webhooks/github"
DISPATCH_RULE = "/api/workflows/<workflow_id>/dispatch"
MAX_DELIVERY_ID_CHARS = 200


class JsonObject(RootModel[dict[str, Any]]):
    """Any JSON object."""

    root: dict[str, Any] = {}


class GitHubHeaders(BaseModel):
    x_github_event: str = Field(
        alias="X-GitHub-Event", description="push, pull_request or ping; others start nothing"
    )
    x_github_delivery: str = Field(
        alias="X-GitHub-Delivery", description="the delivery's id: a replay starts nothing"
    )
    x_hub_signature_256: str = Field(
        alias="X-Hub-Signature-256",
        description="sha256=<hex HMAC-SHA256 of the raw body under GITHUB_WEBHOOK_SECRET>",
    )


class SignatureHeaders(BaseModel):
    x_hub_signature_256: str = Field(
        alias="X-Hub-Signature-256",
        description="sha256=<hex HMAC-SHA256 of the raw body under WEBHOOK_SECRET>",
    )


StartedRuns = RootModel[list[RunAccepted]]


class Pong(BaseModel):
    ok: bool = True
    event: str = "ping"


def _answer(value: Any, status: int) -> Response:
    return Response(dump(value), status=status, content_type="application/json")


def _error(status: int, message: str) -> Response:
    return Response(error_body(message), status=status, content_type="application/json")


async def _signed_body(secret: str | None, variable: str) -> bytes | Response:
    """The raw body when its signature is right, else the 404 or 401 to answer."""
    if not secret:
        return _error(404, f"this route is off: no {variable} is set on the server")
    raw = await request.get_data(as_text=False)
    assert isinstance(raw, bytes)  # as_text=False
    if not signature_matches(secret, raw, request.headers.get(SIGNATURE_HEADER)):
        shown = "missing" if SIGNATURE_HEADER not in request.headers else "wrong"
        return _error(401, f"the {SIGNATURE_HEADER} signature is {shown} (see {variable})")
    return raw


def _delivery_id() -> str:
    delivery_id = request.headers.get("X-GitHub-Delivery", "").strip()
    if not delivery_id:
        raise BadRequest("header X-GitHub-Delivery is missing: each delivery needs its id")
    if len(delivery_id) > MAX_DELIVERY_ID_CHARS or not delivery_id.isprintable():
        raise BadRequest(
            f"header X-GitHub-Delivery must be at most {MAX_DELIVERY_ID_CHARS} printable characters"
        )
    return delivery_id


def webhook_routes(
    runtime: Runtime, *, github_secret: str | None, webhook_secret: str | None
) -> Blueprint:
    routes = Blueprint("webhooks", __name__)

    @routes.post(GITHUB_RULE)
    @document_headers(GitHubHeaders)
    @document_request(JsonObject)
    @document_response(StartedRuns, 202)
    @document_response(Pong, 200)
    @document_response(ErrorBody, 400)
    @document_response(ErrorBody, 401)
    @document_response(ErrorBody, 404)
    @document_response(ErrorBody, 413)
    @document_response(ErrorBody, 422)
    async def github_webhook():
        """A GitHub webhook delivery (content type application/json). `push` and
        `pull_request` start every workflow whose `on:` matches, each with that
        trigger; the answer lists the runs started (possibly none). `ping` answers
        200. 404 when GITHUB_WEBHOOK_SECRET is not set; 401 for a missing or wrong
        signature."""
        raw = await _signed_body(github_secret, "GITHUB_WEBHOOK_SECRET")
        if isinstance(raw, Response):
            return raw
        event = request.headers.get("X-GitHub-Event", "").strip()
        if not event:
            raise BadRequest("header X-GitHub-Event is missing: it names the event")
        payload = parse_body(raw, JsonObject).root
        if event == "ping":
            return _answer(Pong(), 200)
        delivery_id = _delivery_id()
        delivery = read_delivery(event, payload)
        if delivery is None:
            return _answer([], 202)  # an event no workflow here can be started by
        return _answer(await runtime.deliver(delivery_id, delivery), 202)

    @routes.post(DISPATCH_RULE)
    @document_headers(SignatureHeaders)
    @document_request(RunRequest)
    @document_response(RunAccepted, 202)
    @document_response(ErrorBody, 400)
    @document_response(ErrorBody, 401)
    @document_response(ErrorBody, 404)
    @document_response(ErrorBody, 409)
    @document_response(ErrorBody, 413)
    @document_response(ErrorBody, 422)
    async def dispatch(workflow_id: str):
        """Start one run with trigger `webhook` and the body's `inputs`, for a system that
        signs its POST with WEBHOOK_SECRET. The body is also the run's
        `github.event`. 404 when WEBHOOK_SECRET is not set (or for an unknown
        workflow); 401 for a missing or wrong signature."""
        raw = await _signed_body(webhook_secret, "WEBHOOK_SECRET")
        if isinstance(raw, Response):
            return raw
        body = parse_body(raw, RunRequest, optional=True)
        event = dispatch_event(parse_body(raw, JsonObject, optional=True).root)
        accepted = await runtime.run_workflow(
            workflow_id, body.inputs, trigger="webhook", event=event
        )
        return _answer(accepted, 202)

    return routes


__all__ = ["DISPATCH_RULE", "GITHUB_RULE", "webhook_routes"]
