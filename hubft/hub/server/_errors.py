"""HTTP errors the local Hub answers with, shaped the way ``huggingface_hub.hf_raise_for_status`` maps them.

Every 4xx carries an ``X-Error-Code`` header: the client turns ``RepoNotFound``, ``RevisionNotFound`` and
``EntryNotFound`` into its typed exceptions (``repo_exists``, ``file_exists`` and ``datasets`` depend on that, and on
``HEAD`` there is no body to fall back on); the other codes are informational. The message travels both in
``X-Error-Message`` and in a JSON body ``{"error": ...}``, which the client joins into its exception text.
"""

from __future__ import annotations


class ApiError(Exception):
    """A request the server refuses, rendered as ``status`` + ``X-Error-Code`` + JSON ``{"error": message}``.

    Args:
        status: The HTTP status, 4xx or 5xx.
        message: What was wrong, naming the offending value. Never contains a token.
        code: The ``X-Error-Code`` value; defaults to a name derived from the status.
        headers: Extra response headers (e.g. ``X-Repo-Commit`` on an ``EntryNotFound``).
        body: Extra JSON keys merged into the body (e.g. ``url`` on a 409 from ``create_repo``).
    """

    _DEFAULT_CODES = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        411: "LengthRequired",
        412: "PreconditionFailed",
        413: "PayloadTooLarge",
        414: "UriTooLong",
        416: "RangeNotSatisfiable",
        429: "TooManyRequests",
        500: "InternalError",
        501: "NotImplemented",
        503: "ServiceUnavailable",
    }

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or self._DEFAULT_CODES.get(status, "Error")
        self.headers = dict(headers or {})
        self.body = dict(body or {})


def bad_request(message: str) -> ApiError:
    """A 400: the request itself is malformed (bad JSON, bad path, bad field)."""
    return ApiError(400, message)


def repo_not_found(repo_type: str, repo_id: str, *, anonymous: bool = False) -> ApiError:
    """A ``RepoNotFound``; also what a caller without access to a private repo gets, so it stays invisible.

    Like the Hub, the status is 401 for an anonymous caller (logging in might help) and 404 for one who sent a
    token; either way a missing repo and someone else's private repo answer alike.
    """
    return ApiError(401 if anonymous else 404, f"Repository not found: {repo_type} repo {repo_id!r}",
                    code="RepoNotFound")


def revision_not_found(revision: str) -> ApiError:
    """A 404 ``RevisionNotFound`` for an unknown branch, tag, PR ref or commit sha."""
    return ApiError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def entry_not_found(path: str, commit: str) -> ApiError:
    """A 404 ``EntryNotFound``; ``X-Repo-Commit`` lets the client write its ``.no_exist`` cache marker."""
    return ApiError(
        404, f"Entry not found: {path!r} does not exist at commit {commit}", code="EntryNotFound",
        headers={"X-Repo-Commit": commit},
    )


class RepoMoved(Exception):
    """Raised when a request names the old id of a moved repo; the app answers with a redirect to ``new_id``.

    Like the Hub, every request on the old id is redirected (307, so that a POST keeps its method and body), and
    the client follows it; only callers who may see the repo learn its new id.
    """

    def __init__(self, new_id: str) -> None:
        super().__init__(new_id)
        self.new_id = new_id
