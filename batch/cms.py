"""CMS sync: read a CMS export (JSON, JSON Lines or CSV file, or an HTTP JSON API with paging) into the content table.

Records are mapped onto the seed's content model plus `content_type` (`CONTENT_COLUMNS` of the build):
fields are looked up by their own name, then by the aliases of `FIELD_ALIASES` (or a caller's map,
whose keys may be dotted paths into nested records such as Contentful's `fields.title`). List fields
accept JSON arrays, or strings split on `|` (CSV). Timestamps accept RFC 3339 strings, dates and epoch
seconds or milliseconds. Records repeat an id at most once in the result: the latest `updated_at` wins.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from aura.batch.build import CONTENT_COLUMNS
from aura.errors import InvalidRequest, NotFound

REQUIRED = ("id", "title", "url", "content_type", "published_at")
LIST_FIELDS = ("topics", "personas", "industries", "jurisdictions", "policy_flags", "device_suitability")
TIME_FIELDS = ("published_at", "updated_at")
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("_id", "uid", "sys.id"),
    "title": ("name", "headline"),
    "url": ("link", "permalink", "path"),
    "summary": ("excerpt", "description", "teaser"),
    "body": ("content", "text", "html"),
    "content_type": ("type", "contentType", "kind", "sys.contentType.sys.id"),
    "topics": ("tags", "categories"),
    "published_at": ("publishedAt", "published", "date", "sys.createdAt", "created_at"),
    "updated_at": ("updatedAt", "modified", "sys.updatedAt"),
    "jurisdictions": ("regions", "markets"),
    "policy_flags": ("flags",),
    "device_suitability": ("devices",),
}
LIST_SEPARATOR = "|"
_SCHEMA = {
    **{c: pl.String for c in CONTENT_COLUMNS},
    **{c: pl.List(pl.String) for c in LIST_FIELDS},
    **{c: pl.Datetime("ms", "UTC") for c in TIME_FIELDS},
}
_MAX_PAGES = 100_000


def cms_content(records: Iterable[Mapping[str, Any]], field_map: Mapping[str, str] | None = None) -> pl.DataFrame:
    """The content table of `records`, one row per id, sorted by id; an `InvalidRequest` names a bad record.

    `field_map` maps a record field (a dotted path for nested records) to a content column and is tried
    before the defaults.
    """
    by_id: dict[str, dict[str, Any]] = {}
    for number, record in enumerate(records, start=1):
        if not isinstance(record, Mapping):
            raise InvalidRequest(f"CMS record {number} is not an object.")
        row = _content_row(record, field_map or {}, number)
        kept = by_id.get(row["id"])
        if kept is None or _later(row, kept):
            by_id[row["id"]] = row
    return pl.DataFrame([by_id[i] for i in sorted(by_id)], schema=_SCHEMA).select(CONTENT_COLUMNS)


def read_cms_export(path: str | Path, field_map: Mapping[str, str] | None = None) -> pl.DataFrame:
    """Read a CMS export file: `.json` (an array, or an object with `items`), `.jsonl` or `.csv`."""
    source = Path(path)
    if not source.is_file():
        raise NotFound(f"CMS export {source} does not exist.")
    text = source.read_text(encoding="utf-8-sig")
    suffix = source.suffix.lower()
    if suffix == ".csv":
        records: Iterable[Mapping[str, Any]] = csv.DictReader(io.StringIO(text))
    elif suffix == ".jsonl":
        records = [_json(line, f"{source} line {n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif suffix == ".json":
        records = _items(_json(text, str(source)), str(source))
    else:
        raise InvalidRequest(f"CMS export {source} must be .json, .jsonl or .csv.")
    return cms_content(records, field_map)


def fetch_cms_api(
    url: str,
    *,
    api_key: str | None = None,
    page_size: int = 100,
    field_map: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> pl.DataFrame:
    """Read every page of a CMS's JSON API into the content table.

    Each response is an array or an object with `items` (or `data`, `results`, `entries`). The next page
    is the response's `next` link (a URL, absolute or relative) when it has one; otherwise `page=N` and
    `per_page` query parameters, stopping at a short or empty page or when `total` items have been read.
    `api_key` is sent as a bearer token.
    """
    if page_size < 1:
        raise InvalidRequest(f"page_size must be at least 1, got {page_size}.")
    return cms_content(_pages(url, api_key, page_size, timeout), field_map)


def _pages(url: str, api_key: str | None, page_size: int, timeout: float) -> Iterator[Mapping[str, Any]]:
    next_url: str | None = _with_query(url, page=1, per_page=page_size)
    page, seen = 1, 0
    for _ in range(_MAX_PAGES):
        if next_url is None:
            return
        body = _get(next_url, api_key, timeout)
        items = _items(body, next_url)
        yield from items
        seen += len(items)
        link = body.get("next") if isinstance(body, dict) else None
        total = body.get("total") if isinstance(body, dict) else None
        if isinstance(link, str) and link:
            next_url = urllib.parse.urljoin(next_url, link)
        elif not items or len(items) < page_size or (isinstance(total, int) and seen >= total):
            next_url = None
        else:
            page += 1
            next_url = _with_query(url, page=page, per_page=page_size)
    raise InvalidRequest(f"CMS API {url} returned more than {_MAX_PAGES} pages; is its paging looping?")


def _get(url: str, api_key: str | None, timeout: float) -> Any:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise InvalidRequest(f"CMS API {url} answered HTTP {exc.code} {exc.reason}.") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise InvalidRequest(f"CMS API {url} is unreachable: {getattr(exc, 'reason', exc)}.") from None
    return _json(text, f"CMS API {url}")


def _with_query(url: str, **params: int) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query)) | {k: str(v) for k, v in params.items()}
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"{where} is not valid JSON: {exc}.") from None


def _items(body: Any, where: str) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("items", "data", "results", "entries"):
            if isinstance(body.get(key), list):
                return body[key]
    raise InvalidRequest(f"{where} holds neither an array nor an object with an items array.")


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _content_row(record: Mapping[str, Any], field_map: Mapping[str, str], number: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    mapped = {column: source for source, column in field_map.items()}
    for column in CONTENT_COLUMNS:
        candidates = [mapped[column]] if column in mapped else []
        candidates += [column, *FIELD_ALIASES.get(column, ())]
        value = next((v for v in (_lookup(record, c) for c in candidates) if v not in (None, "")), None)
        try:
            row[column] = _convert(column, value)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"CMS record {number}: field {column}: {exc}") from None
    missing = [c for c in REQUIRED if row[c] in (None, "")]
    if missing:
        raise InvalidRequest(f"CMS record {number} (id {row['id']!r}) lacks {', '.join(missing)}.")
    return row


def _convert(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in LIST_FIELDS:
        return _string_list(value)
    if column in TIME_FIELDS:
        return _timestamp(value)
    if isinstance(value, dict | list):
        raise ValueError(f"expected a string, got {type(value).__name__}.")
    return str(value)


def _string_list(value: Any) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            return [part.strip() for part in text.split(LIST_SEPARATOR) if part.strip()]
    if not isinstance(value, list):
        raise ValueError(f"expected a list of strings, got {type(value).__name__}.")
    return [str(v) for v in value if v is not None and str(v).strip()]


def _timestamp(value: Any) -> datetime:
    if isinstance(value, bool):
        raise ValueError("expected a timestamp, got a boolean.")
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, UTC)
    text = str(value).strip()
    if text.isdigit():
        return _timestamp(int(text))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp or epoch time.") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _later(row: Mapping[str, Any], kept: Mapping[str, Any]) -> bool:
    epoch = datetime.min.replace(tzinfo=UTC)
    return (row["updated_at"] or row["published_at"] or epoch) >= (kept["updated_at"] or kept["published_at"] or epoch)
