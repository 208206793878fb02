"""Stars packages, what they credit, and invoice payloads only this bot can have issued.

The payload names the package, the user, the Stars and the credit, and carries an
HMAC keyed by a secret derived from the bot token. So ``pre_checkout_query`` can
accept exactly what this bot offered without a Redis lookup (Telegram allows 10 s,
and Redis may be restarting), and the credit is fixed when the invoice is issued,
not when a later price change lands.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

MIN_STARS = 1
MAX_STARS = 10_000  # Telegram's cap on one Stars invoice


@dataclass(frozen=True)
class StarsPricing:
    packages: tuple[int, ...]
    micro_usd_per_star: int

    def credit_for(self, stars: int) -> int:
        return stars * self.micro_usd_per_star

    def package_name(self, stars: int) -> str:
        return f"p{stars}" if stars in self.packages else "custom"


@dataclass(frozen=True)
class InvoicePayload:
    package: str
    user_id: int
    stars: int
    credit: int  # micro-USD
    nonce: str


class InvoiceSigner:
    VERSION = "v1"

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def for_bot(cls, token: str) -> InvoiceSigner:
        # The token never leaves this process; a derived key keeps it out of the payload math.
        return cls(hashlib.sha256(b"eventbot invoice payload v1\0" + token.encode()).digest())

    def issue(self, *, package: str, user_id: int, stars: int, credit: int) -> str:
        body = f"{self.VERSION}.{package}.{user_id}.{stars}.{credit}.{secrets.token_hex(4)}"
        return f"{body}.{self._mac(body)}"

    def verify(self, payload: str) -> InvoicePayload | None:
        """The payload's contents if this bot issued it, else None."""
        if not payload.isascii():
            return None  # never issued by us; compare_digest would raise TypeError on it
        body, _, mac = payload.rpartition(".")
        if not body or not hmac.compare_digest(mac, self._mac(body)):
            return None
        parts = body.split(".")
        if len(parts) != 6 or parts[0] != self.VERSION:
            return None
        try:
            return InvoicePayload(parts[1], int(parts[2]), int(parts[3]), int(parts[4]), parts[5])
        except ValueError:
            return None

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
