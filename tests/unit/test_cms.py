"""CMS sync: JSON, JSON Lines and CSV exports, and a paged HTTP JSON API served by a local server."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from aura.batch.build import CONTENT_COLUMNS, EVENT_COLUMNS, SiteTables
from aura.batch.cms import cms_content, fetch_cms_api, read_cms_export
from aura.errors import InvalidRequest, NotFound

T0 = datetime(2025, 9, 1, tzinfo=UTC)


def _record(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"c{i:02d}",
        "title": f"Title {i}",
        "url": f"/content/{i}",
        "summary": "A summary.",
        "body": "Body text.",
        "type": "article" if i % 2 else "product",
        "tags": ["ai", "cloud"],
        "publishedAt": "2025-09-01T00:00:00Z",
    } | extra


def test_records_map_onto_the_content_model() -> None:
    nested = {
        "sys": {"id": "n1", "contentType": {"sys": {"id": "guide"}}, "createdAt": 1756684800000},
        "fields": {"headline": "Nested", "link": "/n1"},
    }
    table = cms_content(
        [_record(1, jurisdictions="US|EU", updatedAt=1756771200), nested],
        field_map={"fields.headline": "title", "fields.link": "url"},
    )
    assert table.columns == list(CONTENT_COLUMNS)
    rows = table.to_dicts()
    assert [r["id"] for r in rows] == ["c01", "n1"]
    assert rows[0]["content_type"] == "article" and rows[0]["topics"] == ["ai", "cloud"]
    assert rows[0]["jurisdictions"] == ["US", "EU"] and rows[0]["published_at"] == T0
    assert rows[0]["updated_at"] == datetime(2025, 9, 2, tzinfo=UTC)
    assert rows[1]["title"] == "Nested" and rows[1]["content_type"] == "guide"
    assert rows[1]["published_at"] == T0 and rows[1]["personas"] is None


def test_latest_update_of_a_repeated_id_wins() -> None:
    table = cms_content(
        [_record(1, title="new", updatedAt="2025-09-05"), _record(1, title="old", updatedAt="2025-09-03")]
    )
    assert table["title"].to_list() == ["new"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"title": "x"}, r"CMS record 1 \(id None\) lacks id, url, content_type, published_at"),
        (_record(1, publishedAt="last tuesday"), "field published_at: 'last tuesday' is not an RFC 3339"),
        (_record(1, tags={"a": 1}), "field topics: expected a list of strings, got dict"),
        (_record(1, title={"en": "x"}), "field title: expected a string, got dict"),
        ("not an object", "CMS record 1 is not an object"),
    ],
)
def test_invalid_records(record: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        cms_content([record])


def test_file_exports(tmp_path: Path) -> None:
    records = [_record(i) for i in range(3)]
    (tmp_path / "export.json").write_text(json.dumps({"items": records}))
    (tmp_path / "export.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    csv_rows = ["id,title,url,type,tags,publishedAt,policy_flags"]
    csv_rows += [
        f"c{i:02d},Title {i},/content/{i},{r['type']},ai|cloud,2025-09-01T00:00:00Z," for i, r in enumerate(records)
    ]
    (tmp_path / "export.csv").write_text("\n".join(csv_rows) + "\n")
    tables = [read_cms_export(tmp_path / f"export.{suffix}") for suffix in ("json", "jsonl", "csv")]
    for table in tables:
        assert table["id"].to_list() == ["c00", "c01", "c02"]
        assert table["topics"].to_list() == [["ai", "cloud"]] * 3
        assert table["content_type"].to_list() == ["product", "article", "product"]
    assert tables[2]["policy_flags"].to_list() == [None] * 3
    with pytest.raises(NotFound, match="does not exist"):
        read_cms_export(tmp_path / "missing.json")
    (tmp_path / "export.xml").write_text("<x/>")
    with pytest.raises(InvalidRequest, match=r"must be \.json, \.jsonl or \.csv"):
        read_cms_export(tmp_path / "export.xml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidRequest, match="is not valid JSON"):
        read_cms_export(tmp_path / "bad.json")


def test_synced_content_is_a_valid_site_content_table() -> None:
    content = cms_content([_record(i) for i in range(3)])
    events = pl.DataFrame(schema={c: pl.Datetime("ms", "UTC") if c == "ts" else pl.String for c in EVENT_COLUMNS})
    assert SiteTables(content=content, events=events).content.height == 3


class _CmsHandler(BaseHTTPRequestHandler):
    """Serves 7 records: `/cursor` with `next` links, `/pages` by page number with `total`, `/secret` with auth."""

    records = [_record(i) for i in range(7)]
    requests: list[str] = []

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        type(self).requests.append(self.path)
        if parts.path == "/secret" and self.headers.get("Authorization") != "Bearer k3y":
            self._send(401, {"error": "unauthorized"})
        elif parts.path == "/cursor":
            start = int(query.get("after", 0))
            body: dict[str, Any] = {"items": self.records[start : start + 3]}
            if start + 3 < len(self.records):
                body["next"] = f"/cursor?after={start + 3}"
            self._send(200, body)
        elif parts.path in ("/pages", "/secret"):
            page, size = int(query["page"]), int(query["per_page"])
            self._send(200, {"data": self.records[(page - 1) * size : page * size], "total": len(self.records)})
        elif parts.path == "/broken":
            self._send(200, {"unexpected": True})
        else:
            self._send(404, {"error": "not found"})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        """Silence the per-request log line of the test's HTTP server."""


@pytest.fixture(scope="module")
def cms_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CmsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("path", "page_size", "requests"),
    [
        ("/cursor", 3, ["/cursor?page=1&per_page=3", "/cursor?after=3", "/cursor?after=6"]),
        ("/pages", 3, ["/pages?page=1&per_page=3", "/pages?page=2&per_page=3", "/pages?page=3&per_page=3"]),
        ("/pages", 7, ["/pages?page=1&per_page=7"]),
        ("/pages?locale=en", 4, ["/pages?locale=en&page=1&per_page=4", "/pages?locale=en&page=2&per_page=4"]),
    ],
)
def test_api_paging(cms_url: str, path: str, page_size: int, requests: list[str]) -> None:
    _CmsHandler.requests = []
    table = fetch_cms_api(cms_url + path, page_size=page_size)
    assert table["id"].to_list() == [f"c{i:02d}" for i in range(7)]
    assert _CmsHandler.requests == requests


def test_api_errors(cms_url: str) -> None:
    assert fetch_cms_api(f"{cms_url}/secret", api_key="k3y", page_size=5).height == 7
    with pytest.raises(InvalidRequest, match="answered HTTP 401"):
        fetch_cms_api(f"{cms_url}/secret", api_key="wrong")
    with pytest.raises(InvalidRequest, match="neither an array nor an object with an items array"):
        fetch_cms_api(f"{cms_url}/broken")
    with pytest.raises(InvalidRequest, match="page_size must be at least 1"):
        fetch_cms_api(f"{cms_url}/pages", page_size=0)
    with pytest.raises(InvalidRequest, match="is unreachable"):
        fetch_cms_api("http://127.0.0.1:9/cms", timeout=2)
