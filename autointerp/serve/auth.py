"""API keys: who may call the service.

Keys come from a file (one per line, `#` comments) and/or an environment variable (comma-separated).
Only their SHA-256 digests are kept: a key is a long random secret, not a password, so nobody can
search the space of keys and one unsalted digest suffices, and a digest found in memory or in a key
file is not itself a key. A line `sha256:<64 hex>` is a digest already, so the key file need not hold
any key (`autointerp serve --hash-key` prints the line for a key read from stdin).

A request presents its key as `Authorization: Bearer KEY`, or as the password of HTTP Basic auth
(the user name is ignored), which is what a browser asks for on a 401, so the HTML report opens in one.
A presented key is digested and compared with every stored digest by `hmac.compare_digest`, without
stopping at a match, so the time taken says nothing about which key matched or how much of one.
Keys never reach a log, an error message or the job table: jobs are filed under a client id derived
from the digest, which cannot be turned back into the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from pathlib import Path

from autointerp.errors import AutointerpError

MIN_KEY_CHARS = 16
_DIGEST_LINE = re.compile(r"sha256:([0-9a-f]{64})")
LOCAL_CLIENT = "local"  # the client id of every request when authentication is off


class KeyFileError(AutointerpError):
    """The keys given cannot be used (too short, unreadable file); the message never contains a key."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def digest_line(key: str) -> str:
    """The key file line that stands for `key` without containing it."""
    return "sha256:" + digest(key).hex()


def _parse(entry: str, where: str, number: int) -> bytes:
    match = _DIGEST_LINE.fullmatch(entry)
    if match:
        return bytes.fromhex(match.group(1))
    if len(entry) < MIN_KEY_CHARS:
        raise KeyFileError(
            f"{where}: key {number} is shorter than {MIN_KEY_CHARS} characters; use a long random key "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return digest(entry)


class KeyRing:
    """The digests of the accepted keys."""

    def __init__(self, digests: list[bytes]):
        self._digests = list(dict.fromkeys(digests))

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def load(cls, file: Path | None, env_name: str | None) -> KeyRing:
        digests: list[bytes] = []
        if file is not None:
            try:
                lines = Path(file).read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise KeyFileError(f"cannot read the API key file {file}: {e.strerror or e}") from None
            entries = [line.strip() for line in lines]
            entries = [e for e in entries if e and not e.startswith("#")]
            digests += [_parse(e, str(file), i) for i, e in enumerate(entries, 1)]
        value = os.environ.get(env_name) if env_name else None
        if value:
            entries = [e.strip() for e in value.split(",") if e.strip()]
            digests += [_parse(e, f"${env_name}", i) for i, e in enumerate(entries, 1)]
        return cls(digests)

    def matches(self, key: str) -> bytes | None:
        """The stored digest `key` matches, or None; every stored digest is compared."""
        presented = digest(key)
        found = None
        for stored in self._digests:
            if hmac.compare_digest(presented, stored):
                found = stored
        return found

    def client(self, authorization: str | None) -> str | None:
        """The client id of a request's Authorization header, or None when it carries no valid key."""
        key = presented_key(authorization)
        if key is None:
            return None
        stored = self.matches(key)
        return None if stored is None else client_id(stored)


def client_id(stored: bytes) -> str:
    return hashlib.sha256(b"autointerp-client:" + stored).hexdigest()[:16]


def presented_key(authorization: str | None) -> str | None:
    """The key in `Authorization: Bearer KEY` or `Authorization: Basic base64(user:KEY)`."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None
