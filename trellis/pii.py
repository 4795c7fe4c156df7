"""Keyed hashes of identifiers (HMAC-SHA256): what Trellis keeps of an entity key where the raw value must not
be kept (the decision log). The same key gives the same hash everywhere, so records still join on it; without
the key, a hash cannot be turned back into the identifier by trying every possible one.

The key: ``TRELLIS_PII_KEY`` (its text), else the file ``TRELLIS_PII_KEY_FILE``, else ``<data>/pii.key``, made
with 32 random bytes (mode 0600) the first time it is needed. Keep it out of the repository. A new key gives new
hashes: rows hashed under the old one no longer join with new ones (rotate at a boundary you can name).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import orjson

PREFIX = "hmac-sha256:"


def pii_key(data: Path) -> bytes:
    """The project's hashing key (see the module docstring)."""
    text = os.environ.get("TRELLIS_PII_KEY")
    if text:
        return text.encode()
    path = Path(os.environ.get("TRELLIS_PII_KEY_FILE") or data / "pii.key")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: use theirs
        return path.read_bytes()
    with os.fdopen(fd, "wb") as out:
        out.write(key)
        out.flush()
        os.fsync(out.fileno())
    return key


def keyed_hash(key: bytes, value: Any) -> str | None:
    """``hmac-sha256:<hex>`` of the value's JSON text (42 and "42" differ); None stays None."""
    if value is None:
        return None
    return PREFIX + hmac.new(key, orjson.dumps(value), hashlib.sha256).hexdigest()


__all__ = ["keyed_hash", "pii_key"]
