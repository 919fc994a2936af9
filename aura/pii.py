"""PII scrubbing, shared by the gateway (SDK events before the durable log) and the batch (logs before any write).

E-mail addresses, phone numbers and IP addresses in free text are replaced by a placeholder; URLs
lose their query string, fragment and credentials, since those are where tracking tokens and
identifiers live. Visitor ids that carry PII (a site using e-mail addresses as anon ids) are replaced
by a pseudonym, so they stay distinct without being readable.

>>> scrub_text("mail jane.doe@example.com or call +1 415 555 0100 from 10.0.0.7")
'mail [email] or call [phone] from [ip]'
>>> scrub_url("https://shop.example.com/cart?email=jane@example.com#top")
'https://shop.example.com/cart'
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
import pyarrow as pa
import pyarrow.compute as pc

_HEX = "[0-9A-Fa-f]{1,4}"
_PATTERN = re.compile(
    r"(?P<email>(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    rf"|(?P<ip>(?<![\w.:])(?:(?:\d{{1,3}}\.){{3}}\d{{1,3}}"
    rf"|(?:{_HEX}:){{7}}{_HEX}"
    rf"|(?:{_HEX}(?::{_HEX})*)?::(?:{_HEX}(?::{_HEX})*)?)(?![\w:]|\.\d))"
    r"|(?P<phone>(?<![\w+.])(?:\+\d[\d\s().-]{5,18}\d|\(?\d{2,4}\)?[\s.-]?\d{3,4}[\s.-]?\d{3,4})(?!\w|\.\d))"
)

Kind = Literal["text", "url", "json", "id"]

STREAM_PII_COLUMNS: dict[str, dict[str, Kind]] = {
    "decisions": {
        "anon_id": "id",
        "session_id": "id",
        "referrer_host": "text",
        "page_type": "text",
        "region": "text",
        "context_json": "json",
    },
    "feedback": {},
    "events": {"anon_id": "id", "session_id": "id", "url": "url", "referrer": "url", "props_json": "json"},
    "admin": {"note": "text"},
}
"""The columns of each event stream (aura.eventlog.SCHEMAS) that can carry PII, and how each is scrubbed."""


def _replace(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "ip":
        try:
            ipaddress.ip_address(match.group())
        except ValueError:
            return match.group()
    return f"[{kind}]"


def scrub_text(text: str) -> str:
    """Replace e-mail addresses, phone numbers and IP addresses in `text` with placeholders."""
    return _PATTERN.sub(_replace, text)


def scrub_url(url: str) -> str:
    """Drop a URL's query string, fragment and user info, and scrub what remains."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub_text(url.split("?", 1)[0].split("#", 1)[0])
    netloc = parts.netloc.rpartition("@")[2]
    return scrub_text(urlunsplit((parts.scheme, netloc, parts.path, "", "")))


def pseudonym(value: str) -> str:
    """A stable, unreadable stand-in for an identifier: `pii_` and 24 hex digits of its SHA-256."""
    return "pii_" + hashlib.sha256(value.encode()).hexdigest()[:24]


def scrub_id(value: str) -> str:
    """Return a visitor or session id unchanged, or its `pseudonym` when it contains PII."""
    return pseudonym(value) if scrub_text(value) != value else value


def user_digest(user_id: str) -> str:
    """The SHA-256 hex digest by which erasure records name a visitor (never the id itself)."""
    return hashlib.sha256(user_id.encode()).hexdigest()


def erasure_digests(user_id: str) -> set[str]:
    """The digests of every form in which `user_id` can appear in scrubbed logs: itself and its `scrub_id`."""
    return {user_digest(user_id), user_digest(scrub_id(user_id))}


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_url(value) if "://" in value or value.startswith("/") else scrub_text(value)
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    return value


def scrub_json(text: str) -> str:
    """Scrub the string values of a JSON document (URL-like ones as URLs); numbers and keys are kept.

    Text that is not valid JSON is scrubbed as free text.
    """
    if not text:
        return text
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return scrub_text(text)
    return orjson.dumps(_scrub_value(document)).decode()


_SCRUBBERS: dict[Kind, Callable[[str], str]] = {
    "text": scrub_text,
    "url": scrub_url,
    "json": scrub_json,
    "id": scrub_id,
}


def scrub_column(values: pa.Array | pa.ChunkedArray, kind: Kind) -> pa.Array | pa.ChunkedArray:
    """Scrub a string column; each distinct value is scrubbed once."""
    distinct = pc.unique(values)
    scrub = _SCRUBBERS[kind]
    scrubbed = pa.array([None if v is None else scrub(v) for v in distinct.to_pylist()], pa.string())
    return pc.take(scrubbed, pc.index_in(values, value_set=distinct))


def scrub_table(table: pa.Table, columns: Mapping[str, Kind]) -> pa.Table:
    """Return `table` with each listed column (present and of string type) scrubbed by its kind."""
    for name, kind in columns.items():
        index = table.schema.get_field_index(name)
        if index < 0 or not pa.types.is_string(table.schema.field(index).type):
            continue
        table = table.set_column(index, table.schema.field(index), scrub_column(table.column(index), kind))
    return table
