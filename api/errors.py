"""Errors of the API and the one JSON shape every error takes: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from smartpark.core.errors import StoreError

__all__ = ["ADMIN_ERRORS", "ERRORS", "ApiError", "Conflict", "ErrorBody", "Forbidden", "NotFound", "Unauthorized",
           "Unprocessable",
           "install_error_handlers"]


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message, self.details = message, details


class NotFound(ApiError):
    status, code = 404, "not_found"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Unprocessable(ApiError):
    status, code = 422, "invalid_request"


class Forbidden(ApiError):
    """An admin call made with a site key (for a site the key may see; other sites are 404)."""

    status, code = 403, "forbidden"


class Conflict(ApiError):
    status, code = 409, "conflict"


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
    502: _doc("The time-series store refused the query"),
    503: _doc("The time-series store is unavailable"),
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 403: _doc("Needs an admin key"),
                                                 409: _doc("Already exists")}


def _body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_r: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(_body(exc.code, exc.message, exc.details), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_r: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse(_body("invalid_request", "request parameters are invalid", details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(_body(f"http_{exc.status_code}", str(exc.detail)), exc.status_code)

    @app.exception_handler(StoreError)
    async def _store(_r: Request, exc: StoreError) -> JSONResponse:
        status = 503 if exc.retryable else 502
        return JSONResponse(_body("store_unavailable" if exc.retryable else "store_error", str(exc)), status)
