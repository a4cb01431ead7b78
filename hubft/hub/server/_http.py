"""The HTTP primitives the endpoints work with: requests, responses and routes, free of any server machinery.

Routing happens on the *raw* request path and each captured segment is percent-decoded afterwards: the client
quotes revisions with no safe characters (``refs/pr/1`` arrives as ``refs%2Fpr%2F1``) and tree paths fully
(``sub%2Fdir``), so decoding the whole path first would split them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlencode

from ._errors import ApiError, bad_request

_JSON_LIMIT = 1024 * 1024 * 1024


class Body:
    """The request body: exactly ``Content-Length`` bytes of the connection, read at most once."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self._stream = stream
        self.remaining = length
        self.length = length

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left when negative)."""
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self._stream.read(size) if size else b""
        self.remaining -= len(data)
        return data

    def read_all(self) -> bytes:
        """The whole (rest of the) body.

        Raises:
            ApiError: 400 when the connection ends early.
        """
        data = self.read()
        if self.remaining:
            raise bad_request(f"Request body ended after {len(data)} of {self.length} bytes")
        return data

    def drain(self, limit: int) -> bool:
        """Discard what the endpoint did not read, up to ``limit`` bytes; ``False`` if more was left."""
        if self.remaining > limit:
            return False
        while self.remaining and self.read(1024 * 1024):
            pass
        return not self.remaining


@dataclass
class Request:
    """One HTTP request, as the endpoints see it.

    Attributes:
        method: ``GET``, ``HEAD``, ``POST``, ...
        path: The raw (still percent-encoded) path, without the query.
        query: The decoded query parameters.
        headers: Case-insensitive headers.
        body: The body stream.
        base_url: ``http://host:port`` as the client addressed the server; every URL the server hands out starts
            with it, so that it matches the client's ``HF_ENDPOINT``.
        raw_query: The query string as sent (for redirects that keep it).
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: Body
    base_url: str
    raw_query: str = ""

    @classmethod
    def parse_query(cls, raw: str) -> dict[str, list[str]]:
        """Decode a query string, keeping blank values."""
        return parse_qs(raw, keep_blank_values=True)

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """Whether query parameter ``name`` is set to a true value (``1``, ``true``, ``yes``)."""
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ApiError: 400 for a body that is not valid JSON.
        """
        if self.body.length > _JSON_LIMIT:
            raise ApiError(413, f"JSON body of {self.body.length} bytes is too large")
        raw = self.body.read_all()
        try:
            return json.loads(raw or b"null")
        except ValueError as e:
            raise bad_request(f"Request body is not valid JSON: {e}") from None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object (an empty body counts as ``{}``).

        Raises:
            ApiError: 400 when it is not an object.
        """
        data = self.json()
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise bad_request(f"Request body must be a JSON object, got {type(data).__name__}")
        return data


@dataclass
class Response:
    """An answer; a body is either ``body`` bytes or ``length`` bytes of ``file`` from ``offset``."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None
    offset: int = 0
    length: int = 0

    @property
    def content_length(self) -> int:
        """The number of body bytes (also announced on ``HEAD``)."""
        return self.length if self.file is not None else len(self.body)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON response."""
        return cls(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
                   json.dumps(data).encode())

    @classmethod
    def error(cls, error: ApiError) -> Response:
        """The response for a refused request; see ``_errors`` for why every 4xx carries ``X-Error-Code``."""
        headers = {"X-Error-Code": error.code, "X-Error-Message": _header_safe(error.message), **error.headers}
        return cls.json({"error": error.message, **error.body}, error.status, headers)


def _header_safe(text: str) -> str:
    # Header values are latin-1 on the wire and must not contain line breaks.
    return " ".join(text.split()).encode("latin-1", "replace").decode("latin-1")


def paged_json(request: Request, items: Sequence[Any], page_size: int) -> Response:
    """One page of ``items`` as a JSON list, with a ``Link: <next>; rel="next"`` header when more remain.

    The page starts at the ``cursor`` query parameter (an offset) and holds ``min(limit, page_size)`` items. The
    next URL is absolute because the client follows it as-is.

    Raises:
        ApiError: 400 for a cursor or limit that is not a non-negative integer.
    """
    try:
        start = int(request.param("cursor", "0"))
        limit = min(int(request.param("limit", str(page_size))), page_size)
    except ValueError:
        raise bad_request("cursor and limit must be integers") from None
    if start < 0 or limit < 1:
        raise bad_request("cursor must be >= 0 and limit >= 1")
    headers = {}
    if start + limit < len(items):
        query = {k: v for k, v in request.query.items() if k != "cursor"}
        query["cursor"] = [str(start + limit)]
        headers["Link"] = f'<{request.base_url}{request.path}?{urlencode(query, doseq=True)}>; rel="next"'
    return Response.json(list(items[start:start + limit]), headers=headers)


Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    """An endpoint: a name (used in fault plans and logs), the methods it serves and a raw-path regex.

    The regex's named groups are percent-decoded and passed to ``handler(app, request, **groups)``.
    """

    name: str
    methods: tuple[str, ...]
    pattern: re.Pattern[str]
    handler: Handler

    loose: re.Pattern[str] | None = None

    @classmethod
    def of(cls, name: str, methods: str, pattern: str, handler: Handler) -> Route:
        """Build a route from a space-separated method list and a regex source.

        A pattern with a mandatory ``ns`` group also gets a *loose* twin where the namespace is optional: a repo id
        without a namespace (``/repo-x/resolve/main/f``) then still reaches the endpoint, which answers
        ``RepoNotFound`` as the Hub does, instead of a generic 404 the client cannot map.
        """
        loose = re.compile(pattern.replace(_NS, f"(?:{_NS})?")) if _NS in pattern else None
        return cls(name, tuple(methods.split()), re.compile(pattern), handler, loose)

    def match(self, path: str, *, loose: bool = False) -> dict[str, str | None] | None:
        """The decoded groups if ``path`` matches (the loose pattern when ``loose``)."""
        pattern = self.loose if loose else self.pattern
        found = pattern.match(path) if pattern is not None else None
        if found is None:
            return None
        return {k: (unquote(v) if v is not None else None) for k, v in found.groupdict().items()}

    def repo_span(self, path: str) -> tuple[int, int] | None:
        """Where the repo id (namespace and name) sits in ``path``, for rewriting it into a redirect."""
        for pattern in (self.pattern, self.loose):
            found = pattern.match(path) if pattern is not None else None
            if found is not None and "name" in found.groupdict():
                start = found.start("ns") if found.group("ns") is not None else found.start("name")
                return start, found.end("name")
        return None


# Fragments shared by the route tables.
_NS = r"(?P<ns>[^/]+)/"
API_REPO = r"^/api/(?P<type>models|datasets|spaces)/" + _NS + r"(?P<name>[^/]+)"
GIT_REPO = r"^/(?:(?P<prefix>datasets|spaces)/)?" + _NS + r"(?P<name>[^/]+?)"


def repo_type_of(plural_or_prefix: str | None) -> str:
    """``models``/``datasets``/``spaces`` (API paths) or a URL prefix (``None`` for models) -> the repo type."""
    return (plural_or_prefix or "models").removesuffix("s")


def url_prefix(repo_type: str) -> str:
    """The URL prefix of a repo type in non-API URLs: ``""``, ``"datasets/"`` or ``"spaces/"``."""
    return "" if repo_type == "model" else f"{repo_type}s/"
