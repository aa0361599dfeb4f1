"""Credentials out of URLs and messages: what a log line, an error or /readyz may show of a store's address."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["redact", "split_credentials"]

# scheme://user:password@  or  scheme://token@  anywhere in a text; up to the authority's LAST '@', as the URL
# parsers split it (a raw '@' in a password left its tail shown)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]+@")


def redact(text: str) -> str:
    """``text`` with the user info of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without user info, user, password): credentials given in a URL move to where they are not
    echoed (an Authorization header), the URL is what messages and reprs may show."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return (bare, unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None)
