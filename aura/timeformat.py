"""RFC 3339 date-times: the one timestamp format of bundle manifests and the HTTP API."""

from __future__ import annotations

import re
from datetime import datetime

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])",
    re.IGNORECASE,
)
"""RFC 3339's date-time (section 5.6; T and Z in either case); `datetime.fromisoformat` alone also takes other ISO 8601
forms, such as a bare date."""


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 date-time such as `2025-10-01T12:00:00Z`; ValueError for anything else."""
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"{text!r} is not an RFC 3339 date-time")
    return datetime.fromisoformat(text.upper())
