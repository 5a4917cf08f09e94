"""Links that carry their own short-lived permission (HMAC-SHA256 over path and expiry)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from aiohttp import web


class UrlSigner:
    """Signs and checks `?expires=<unix s>&signature=<hex>` on a path."""

    def __init__(self, key: str = "") -> None:
        self._key = (key or secrets.token_hex(32)).encode()

    def _signature(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def query(self, path: str, expires: int) -> str:
        """The query string that makes `path` fetchable without credentials until `expires`."""
        return f"expires={expires}&signature={self._signature(path, expires)}"

    def allows(self, request: web.Request) -> bool:
        """True when the request carries a valid, unexpired signature for its path."""
        expires, signature = request.query.get("expires", ""), request.query.get("signature", "")
        if not expires.isdigit() or not signature or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, self._signature(request.path, int(expires)))


URL_SIGNER = web.AppKey("url_signer", UrlSigner)
