"""Errors a request can meet, each with the HTTP status and the OpenAI error body it is answered with."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request the server refuses, answered as ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        status: HTTP status (4xx for the client's mistakes, 5xx for the server's).
        message: What is wrong, naming the offending field and value.
        param: The field, as a path into the request (``messages[0].content[1].image_url``).
        code: A short machine-readable code (``model_not_found``, ``queue_full``, ...).
        headers: Extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    """A 400 naming the field."""
    return ApiError(400, f"{param}: {message}" if param else message, param, code)
