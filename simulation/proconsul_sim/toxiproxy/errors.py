"""The API errors of the toxiproxy-compatible server: message and HTTP status, as toxiproxy reports them.

Every error a handler can raise is an `ApiError`; `server.py` turns it into toxiproxy's error JSON
`{"error": <message>, "status": <code>}` in one place.
"""

from __future__ import annotations


class ApiError(Exception):
    """An API failure with the HTTP status toxiproxy answers for it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def with_detail(self, detail: str) -> ApiError:
        """toxiproxy joins a wrapper message and the cause as "<wrapper>: <cause>"."""
        return ApiError(f"{self.message}: {detail}", self.status)

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, "status": self.status}


# toxiproxy's own messages and statuses (api.go), so clients that match on them keep working.
BAD_REQUEST_BODY = ApiError("bad request body", 400)
MISSING_FIELD = ApiError("missing required field", 400)
PROXY_NOT_FOUND = ApiError("proxy not found", 404)
PROXY_ALREADY_EXISTS = ApiError("proxy already exists", 409)
INVALID_STREAM = ApiError("stream was invalid, can be either upstream or downstream", 400)
INVALID_TOXIC_TYPE = ApiError("invalid toxic type", 400)
TOXIC_ALREADY_EXISTS = ApiError("toxic already exists", 409)
TOXIC_NOT_FOUND = ApiError("toxic not found", 404)


def internal(message: str) -> ApiError:
    """Failures toxiproxy does not classify (a listen address in use, an unresolvable host) are 500s."""
    return ApiError(message, 500)
