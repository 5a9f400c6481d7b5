"""The one error type a handler raises for the client to read."""

from __future__ import annotations


class HttpError(Exception):
    """A refusal or failure the client reads: HTTP status, message, OpenAI code/param."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
