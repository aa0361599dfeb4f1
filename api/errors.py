"""Errors of the API and the one JSON shape every error takes: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from smartpark.alerts.errors import AlertsUnavailable
from smartpark.core.errors import StoreError
from smartpark.core.redact import redact

__all__ = ["ADMIN_ERRORS", "ERRORS", "ApiError", "Conflict", "ErrorBody", "Forbidden", "NotFound", "TooManyRequests",
           "Unauthorized", "Unprocessable", "alerts_unavailable", "error_body", "install_error_handlers"]

log = logging.getLogger("smartpark.api")
ALERTS_UNAVAILABLE = Counter("smartpark_api_alerts_unavailable", "Requests that could not read or edit the alert "
                             "tables (503 answers, overview pages shown without their alerts)")


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message, self.details = message, details

    @property
    def headers(self) -> dict[str, str] | None:
        return None


class NotFound(ApiError):
    status, code = 404, "not_found"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    @property
    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class Unprocessable(ApiError):
    status, code = 422, "invalid_request"


class Forbidden(ApiError):
    """An admin call made with a site key (for a site the key may see; other sites are 404)."""

    status, code = 403, "forbidden"


class Conflict(ApiError):
    status, code = 409, "conflict"


class TooManyRequests(ApiError):
    """A key over its rate or concurrency limit (or the API over its share of the store): retry later."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, {"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


class ErrorDetail(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["site 'steel-works' not found"])
    details: Any = None


class ErrorBody(BaseModel):
    """The one shape of every error response."""

    error: ErrorDetail


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# Documented on every router, so the schema states what the handlers below really send (422 included:
# FastAPI's own validation shape is replaced by ours).
ERRORS: dict[int | str, dict[str, Any]] = {
    401: _doc("No key, or an invalid or revoked one"),
    404: _doc("Not found, or not visible to this key"),
    422: _doc("Invalid parameters"),
    429: _doc("Over the key's rate or concurrency limit: retry after `Retry-After` seconds"),
    502: _doc("The time-series store refused the query"),
    503: _doc("The time-series store (or, for alerts, the metadata database) is unavailable"),
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 403: _doc("Needs an admin key"),
                                                 409: _doc("Already exists")}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def alerts_unavailable(exc: AlertsUnavailable) -> None:
    """Count a request the alert tables failed (the database's reason is logged where it was met)."""
    ALERTS_UNAVAILABLE.inc()


def install_error_handlers(app: FastAPI) -> None:
    """Every failure answered in the one error body; the most specific handler of an exception wins."""
    app.add_exception_handler(ApiError, _api)  # type: ignore[arg-type]  # Starlette: Exception handlers
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(AlertsUnavailable, _alerts)  # type: ignore[arg-type]
    app.add_exception_handler(StoreError, _store)  # type: ignore[arg-type]


async def _api(_r: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status, headers=exc.headers)


async def _validation(_r: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse(error_body("invalid_request", "request parameters are invalid", details), 422)


async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(f"http_{exc.status_code}", str(exc.detail)), exc.status_code)


async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error: %s", redact(repr(exc)))  # uvicorn logs the traceback
    return JSONResponse(error_body("internal_error", "internal error"), 500)


async def _alerts(_r: Request, exc: AlertsUnavailable) -> JSONResponse:
    alerts_unavailable(exc)
    return JSONResponse(error_body("alerts_unavailable", "the alert tables are unavailable; retry"), 503,
                        headers={"Retry-After": "5"})


async def _store(_r: Request, exc: StoreError) -> JSONResponse:
    # the store's own words (its parser's messages, its URL) are logged, never sent: they help no caller
    # narrow anything and can tell an attacker about the store
    log.warning("store error: %s", redact(str(exc)))
    if exc.retryable:
        return JSONResponse(error_body("store_unavailable", "the time-series store is unavailable; retry"), 503,
                            headers={"Retry-After": "5"})
    return JSONResponse(error_body("store_error", "the time-series store refused the query"), 502)

