"""The OpenAPI 3.1 document of the HTTP API, with schemas generated from the same pydantic models."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from relay.domain.model import (
    AcceptedView,
    AckRequest,
    AlertView,
    ErrorView,
    EventView,
    MergeRequest,
    Report,
    SplitRequest,
    TrackView,
)
from relay.edges.api.context import CONTEXT

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        401: "no or unknown bearer token", 403: "this token may not do this", 404: "no such alert or track",
        409: "same report_id, other content; or a merge or split that cannot be made (into itself, a closed "
             "track)", 413: "body over 64 KiB", 422: "invalid; detail names each field",
        429: "over the token's rate; see Retry-After", 503: "cannot be stored now; nothing was accepted",
    }
    return {str(c): _json(_ref("ErrorView"), text[c]) for c in codes}


def build_openapi(public_url: str) -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (Report, "validation"), (AckRequest, "validation"), (AcceptedView, "serialization"),
            (AlertView, "serialization"), (ErrorView, "serialization"), (EventView, "serialization"),
            (TrackView, "serialization"), (MergeRequest, "validation"), (SplitRequest, "validation"),
        ],
        ref_template=_REF,
    )
    alert_id = {"name": "alert_id", "in": "path", "required": True, "schema": {"type": "string"}}
    track_id = {"name": "track_id", "in": "path", "required": True, "schema": {"type": "string"}}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "uav-relay", "version": "1",
                 "description": "UAV sighting reports from 112 operators to airfield dispatchers."},
        "servers": [{"url": public_url}],
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/api/v1/reports": {"post": {
                "summary": "File a sighting report (operator)", "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Report")}}},
                "responses": {
                    "201": _json(_ref("AcceptedView"), "accepted: on disk"),
                    "200": _json(_ref("AcceptedView"), "replay of the same report"),
                    **_errors(401, 403, 409, 413, 422, 429, 503),
                },
            }},
            "/api/v1/alerts": {"get": {
                "summary": "List alerts, newest first", "security": secured,
                "parameters": [
                    {"name": "state", "in": "query", "schema": {
                        "type": "string", "default": "all",
                        "enum": ["open", "all", "pending", "delivered", "acknowledged", "unacknowledged"]}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                ],
                "responses": {
                    "200": _json({"type": "object", "required": ["alerts"],
                                  "properties": {"alerts": {"type": "array", "items": _ref("AlertView")}}},
                                 "alerts this token may read"),
                    **_errors(401, 422),
                },
            }},
            "/api/v1/alerts/{alert_id}": {"get": {
                "summary": "One alert", "security": secured, "parameters": [alert_id],
                "responses": {"200": _json(_ref("AlertView"), "the alert"), **_errors(401, 403, 404)},
            }},
            "/api/v1/alerts/{alert_id}/ack": {"post": {
                "summary": "Acknowledge (desk)", "security": secured, "parameters": [alert_id],
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("AckRequest")}}},
                "responses": {
                    "200": _json(_ref("AlertView"), "acknowledged (a later ack leaves the first unchanged)"),
                    **_errors(401, 403, 404, 422),
                },
            }},
            "/api/v1/alerts/{alert_id}/received": {"post": {
                "summary": "The desk's browser console shows the alert (desk): a `web` delivery, delivered; a second "
                           "call changes nothing", "security": secured, "parameters": [alert_id],
                "responses": {"200": _json(_ref("AlertView"), "the alert"), **_errors(401, 403, 404)},
            }},
            "/api/v1/places": {"get": {
                "summary": "Places of the gazetteer (consoles.gazetteer) whose names start with, or hold, q",
                "security": secured,
                "parameters": [
                    {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 100}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10}},
                ],
                "responses": {"200": {"description": "{places: [{name, district, lat, lon, accuracy_m}]}"},
                              **_errors(401, 422)},
            }},
            "/api/v1/alerts/{alert_id}/history": {"get": {
                "summary": "What happened to one alert, oldest first (accepted, delivered, acks, duplicates)",
                "security": secured, "parameters": [alert_id],
                "responses": {"200": {"description": "events"}, **_errors(401, 403, 404)},
            }},
            "/api/v1/alerts/{alert_id}/cap": {"get": {
                "summary": "The alert as an OASIS CAP 1.2 document, valid against the CAP 1.2 schema (same readers as "
                           "the alert)", "security": secured, "parameters": [alert_id],
                "responses": {"200": {"description": "the CAP <alert>", "content": {"application/cap+xml": {
                    "schema": {"type": "string"}}}}, **_errors(401, 403, 404)},
            }},
            "/api/v1/cap": {"get": {
                "summary": "Atom feed of the alerts this token may read as CAP 1.2 documents, oldest first, each "
                           "inline and linked; poll its `next` link to see each alert once", "security": secured,
                "parameters": [
                    {"name": "since", "in": "query", "description": "RFC 3339 with an offset: alerts accepted at "
                     "or after it (default: the last 24 hours)", "schema": {"type": "string", "maxLength": 40}},
                    {"name": "after", "in": "query", "description": "an alert id: alerts accepted after it (what "
                     "the next link carries)", "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$"}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                ],
                "responses": {"200": {"description": "Atom feed (RFC 4287) with RFC 5005 next link",
                                      "content": {"application/atom+xml": {"schema": {"type": "string"}}}},
                              **_errors(401, 422)},
            }},
            "/api/v1/audit": {"get": {
                "summary": "Audit trail (engineer): acks with their source, refused acks, webhooks and links",
                "security": secured,
                "parameters": [{"name": "limit", "in": "query",
                                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
                "responses": {"200": {"description": "events, newest first"}, **_errors(401, 403, 422)},
            }},
            "/api/v1/tracks": {"get": {
                "summary": "List tracks, latest activity first (an operator: those of its reports; a desk: those "
                           "sent to it)", "security": secured,
                "parameters": [
                    {"name": "state", "in": "query", "schema": {
                        "type": "string", "default": "open", "enum": ["open", "acknowledged", "closed", "all"]}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                ],
                "responses": {
                    "200": _json({"type": "object", "required": ["tracks"],
                                  "properties": {"tracks": {"type": "array", "items": _ref("TrackView")}}},
                                 "tracks this token may read"),
                    **_errors(401, 422),
                },
            }},
            "/api/v1/tracks/{track_id}": {"get": {
                "summary": "One track", "security": secured, "parameters": [track_id],
                "responses": {"200": _json(_ref("TrackView"), "the track"), **_errors(401, 403, 404)},
            }},
            "/api/v1/tracks/{track_id}/ack": {"post": {
                "summary": "Acknowledge a whole track (desk): every alert of it sent to this desk, and later ones",
                "security": secured, "parameters": [track_id],
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("AckRequest")}}},
                "responses": {"200": _json(_ref("TrackView"), "the track, acknowledged"),
                              **_errors(401, 403, 404, 422)},
            }},
            "/api/v1/tracks/{track_id}/merge": {"post": {
                "summary": "Merge this track into another (desk): one object after all", "security": secured,
                "parameters": [track_id],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("MergeRequest")}}},
                "responses": {"200": _json(_ref("TrackView"), "the merged track"),
                              **_errors(401, 403, 404, 409, 422)},
            }},
            "/api/v1/alerts/{alert_id}/split": {"post": {
                "summary": "Take the alert out of its track into a new one (desk)", "security": secured,
                "parameters": [alert_id],
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("SplitRequest")}}},
                "responses": {"200": _json(_ref("TrackView"), "the new track"), **_errors(401, 403, 404, 409, 422)},
            }},
            "/api/v1/events": {"get": {
                "summary": "Server-Sent Events: alert state changes (data: EventView JSON)", "security": secured,
                "responses": {"200": {"description": "event stream",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **_errors(401)},
            }},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "running"}}}},
            "/readyz": {"get": {"summary": "Readiness", "responses": {
                "200": {"description": "store writable and a channel up"},
                "503": {"description": "not ready; body lists the reasons"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app[CONTEXT].public_url))
