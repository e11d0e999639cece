"""Encryption at rest for provider API keys and webhook signing secrets.

A Redis dump or replica must not hand out credentials that let someone call providers or forge our
webhooks, so those values are Fernet tokens (AES-128-CBC + HMAC-SHA256) under the operator's
`secret_key`, which lives in the environment, never in Redis.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from service.settings import Settings


class MissingSecretKey(RuntimeError):
    """No `TUNESET_SECRET_KEY` is configured, so nothing secret can be stored."""


def new_key() -> str:
    """A fresh Fernet key for `TUNESET_SECRET_KEY`."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(
                "TUNESET_SECRET_KEY is not a Fernet key (32 url-safe base64 bytes; "
                "`tuneset keys secret` makes one)"
            ) from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        key = settings.secret_key.get_secret_value() if settings.secret_key else ""
        if not key:
            raise MissingSecretKey(
                "TUNESET_SECRET_KEY is not set: it encrypts provider API keys and webhook signing "
                "secrets at rest (`tuneset keys secret` makes one)"
            )
        return cls(key)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            # Usually the key was changed after the value was stored; say so instead of a bare InvalidToken.
            raise ValueError(
                "cannot decrypt a stored secret: wrong TUNESET_SECRET_KEY or corrupted value"
            ) from exc
