"""The transaction pattern both metadata repositories (registry, alerts) share on their SQLAlchemy engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, Select
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["SqlRepository"]

M = TypeVar("M")


class SqlRepository:
    """One short transaction per call. Rows are not expired on commit, so callers get plain objects that stay
    readable after their session closed (the API and the engine hold them across requests and ticks)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def _get(self, model: type[M], key: Any) -> M | None:
        with self.session() as s:
            return s.get(model, key)

    def _all(self, query: Select[M]) -> list[M]:
        with self.session() as s:
            return list(s.scalars(query))
