"""CloudEvents' Kafka protocol binding (binary mode), as the tests check it on alerts-topic records."""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urlparse

REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def check_binding(headers: list[tuple[str, bytes]], record: dict,
                  content_type: str = "application/json") -> dict[str, str]:
    """The binary-mode rules this project relies on; returns the headers as text."""
    h = {k: v.decode("utf-8") for k, v in headers}
    assert len(h) == len(headers), "a header repeated"
    for name in REQUIRED:
        assert h.get(name), f"required attribute {name} missing or empty"
    assert h["ce_specversion"] == "1.0"
    assert urlparse(h["ce_source"]).path or urlparse(h["ce_source"]).netloc  # a URI-reference
    assert re.fullmatch(r"[a-z0-9.]+", h["ce_type"]) and h["ce_type"].startswith("io.latentwatch.")
    assert RFC3339.match(h["ce_time"]) and datetime.fromisoformat(h["ce_time"].replace("Z", "+00:00"))
    assert h["ce_subject"] == record["sensor_id"]
    assert h["content-type"] == content_type
    return h
