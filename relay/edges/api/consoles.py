"""The browser consoles: the dispatcher's (open alerts, live, one button to acknowledge) and the operator's (a
form to flag a report fast, and what became of its recent reports), served from package files.

The pages are clients of the same HTTP API as any other, with the same bearer tokens: nothing here bypasses the
API's checks. Every UI string comes from one file per language (`relay/consoles/strings_ru.json`), filled into
the HTML here and handed to the scripts as a JSON data block, so a translation touches one file.
"""

from __future__ import annotations

import enum
import html
import json
import re
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from aiohttp import web

from relay.domain.model import Report
from relay.edges.api.access import authenticate
from relay.edges.api.context import CONTEXT
from relay.edges.api.errors import ApiError
from relay.edges.auth import Role

DEFAULT_LANG = "ru"
_LANG = re.compile(r"^[a-z]{2}$")
_SLOT = re.compile(r"\{\{\s*([a-z_.:]+)\s*\}\}")

PAGES = {"dispatcher": "dispatcher.html", "operator": "operator.html"}
# Every file of these kinds in relay/consoles/ is served as it is (the pages' modules, styles, icons, sounds).
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
_STATIC_NAME = re.compile(r"^[a-z0-9_-]{1,64}\.(js|css|svg|png)$")

# No inline script or style and no other origin: a hostile string in a report (an address, the notes) cannot run
# or phone home, and the pages work offline. Trusted Types with no policy makes any HTML-string sink throw, so the
# scripts can only build the DOM from text nodes. form-action 'none': if the scripts failed to load, the login form
# must not fall back to a native GET that would put the token in the URL.
def csp(tile_origin: str = "") -> str:
    """The pages' policy; `tile_origin`: the one other origin images may come from, the map tiles' server
    (`consoles.tile_url`), when a site has one."""
    return "; ".join([
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        f"img-src 'self'{' ' + tile_origin if tile_origin else ''}",
        "media-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ])


CSP = csp()
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


def _files() -> Traversable:
    return resources.files("relay") / "consoles"


@cache
def languages() -> frozenset[str]:
    return frozenset(
        f.name.removeprefix("strings_").removesuffix(".json")
        for f in _files().iterdir()
        if f.name.startswith("strings_") and f.name.endswith(".json") and "." not in f.name[8:-5]
    )


@cache
def strings(lang: str) -> dict[str, Any]:
    """`strings_{lang}.json`, with each page's own sections from `strings_{lang}.{part}.json` beside it (a part may
    add sections, never replace one)."""
    loaded: dict[str, Any] = json.loads((_files() / f"strings_{lang}.json").read_text("utf-8"))
    for f in sorted(_files().iterdir(), key=lambda f: f.name):
        if f.name.startswith(f"strings_{lang}.") and f.name.endswith(".json") and f.name != f"strings_{lang}.json":
            part: dict[str, Any] = json.loads(f.read_text("utf-8"))
            clash = sorted(set(part) & set(loaded))
            if clash:
                raise KeyError(f"{f.name} would replace the sections {clash}")
            loaded.update(part)
    return loaded


def _lookup(table: dict[str, Any], key: str) -> str:
    node: Any = table
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"no string {key!r} in the console strings")
        node = node[part]
    if not isinstance(node, str):
        raise KeyError(f"console string {key!r} is not text")
    return node


def _options(table: dict[str, Any], field: str) -> str:
    """<option>s of one enum field of the report: values from the model, labels from the strings, the model's
    default selected, so the form can never offer a value the API refuses nor miss one it accepts."""
    info = Report.model_fields[field]
    kind = info.annotation
    if not (isinstance(kind, type) and issubclass(kind, enum.Enum)):
        raise KeyError(f"report field {field!r} is not an enum")
    labels = table["enums"][field]
    out = []
    for member in kind:
        selected = " selected" if member == info.default else ""
        out.append(f"<option value='{html.escape(member.value)}'{selected}>{html.escape(labels[member.value])}"
                   "</option>")
    return "".join(out)


def _script_json(table: dict[str, Any]) -> str:
    # Inside <script type="application/json"> only "</" could end the block early; escape every tag character.
    text = json.dumps(table, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(template: str, table: dict[str, Any]) -> str:
    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "strings_json":
            return _script_json(table)
        if key.startswith("options:"):
            return _options(table, key.removeprefix("options:"))
        return html.escape(_lookup(table, key))

    return _SLOT.sub(fill, template)


@cache
def page(name: str, lang: str) -> str:
    return render((_files() / PAGES[name]).read_text("utf-8"), strings(lang))


@cache
def _static(name: str) -> bytes:
    return (_files() / name).read_bytes()


def _lang(request: web.Request) -> str:
    wanted = request.query.get("lang", DEFAULT_LANG)
    return wanted if _LANG.match(wanted) and wanted in languages() else DEFAULT_LANG


def _page_response(name: str, request: web.Request) -> web.Response:
    origin = request.app[CONTEXT].consoles.tile_origin
    headers = PAGE_HEADERS if not origin else {**PAGE_HEADERS, "Content-Security-Policy": csp(origin)}
    return web.Response(text=page(name, _lang(request)), content_type="text/html", charset="utf-8", headers=headers)


async def dispatcher(request: web.Request) -> web.Response:
    return _page_response("dispatcher", request)


async def operator(request: web.Request) -> web.Response:
    return _page_response("operator", request)


async def index(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/console/operator"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not _STATIC_NAME.match(name) or not (_files() / name).is_file():
        raise ApiError(404, "not_found", "no such console file")
    kind = STATIC_TYPES[name[name.rindex("."):]]
    return web.Response(body=_static(name), content_type=kind, charset=None if kind == "image/png" else "utf-8",
                        headers={"Cross-Origin-Resource-Policy": "same-origin"})


async def session(request: web.Request) -> web.Response:
    """Whose token this is: the pages check at login that a desk's token opens the dispatcher's console and an
    operator's the operator's, and show the id."""
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx)
    body: dict[str, Any] = {"role": principal.role.value, "id": principal.id}
    if principal.role is Role.DESK:
        desk = ctx.engine.desk(principal.id)
        area = desk.area if desk is not None else None
        body["name"] = desk.name if desk is not None else principal.id
        # the dispatcher's plot is centred on the airfield; without an area it has no centre to draw around
        body["area"] = None if area is None else {"lat": area.lat, "lon": area.lon, "radius_km": area.radius_km}
        body["tile_url"] = ctx.consoles.tile_url or None
        body["join_window_s"] = ctx.engine.tracks.params.join_window_s
    elif principal.role is Role.OPERATOR:
        # whom an operator calls when nobody acknowledges, and what the desks are called
        body["desks"] = [{"id": d.id, "name": d.name or d.id, "phone": d.phone or None} for d in ctx.engine.desks]
        body["gazetteer"] = len(ctx.places) > 0
    return web.json_response(body)

