"""A plain HTTP GET for tests of the /metrics, /healthz and /readyz endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(url: str) -> tuple[int, str]:
    """(status, body), for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
