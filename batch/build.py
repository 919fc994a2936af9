"""Builds a bundle from site tables: content NLP and embeddings, segments, posteriors and cold-start rules.

The aggregations run as DuckDB SQL over the event log; the numerical parts (k-means, Thompson-sampling
propensities) are seeded numpy, so the same tables, `now` and `seed` give the same bundle contents.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from aura.batch.context_intent import (
    EVIDENCE_KEYS,
    assigned_intents,
    context_intent_rules,
    with_inferred_rules,
)
from aura.batch.intent import (
    IntentModel,
    assign_intents,
    learn_intent_evidence,
    train_intent_model,
)
from aura.batch.ope import DEFAULT_MARGIN, SlatePolicy, compare
from aura.batch.ope import REPORT_KEY as OPE_REPORT
from aura.batch.posteriors import (
    DEFAULT_HALF_LIFE_DAYS,
    PRIOR_STRENGTH,
    REPORT_KEY,
    cohort_priors,
    posterior_counts,
    posterior_table,
    read_previous,
    stats_report,
)
from aura.bundle.format import (
    COLD_START,
    COLD_START_KEYS,
    CONTENT,
    EMBEDDING_DIM,
    GLOBAL_SEGMENT,
    POSTERIORS,
    SCHEMAS,
    SEGMENTS,
    USER_SEGMENTS,
    Manifest,
)
from aura.bundle.writer import new_bundle_version, write_bundle
from aura.config import (
    CONTEXT_DIMENSIONS,
    DEFAULT_DIMENSIONS,
    PROFILE_DIMENSIONS,
    Policies,
    Surface,
    check_dimensions,
    custom_context_key,
)
from aura.context import referrer_class, time_of_day
from aura.embedding import TextEmbedder
from aura.errors import ConfigError, InvalidRequest, NotFound

SITE_FILES: dict[str, str] = {"content": "content.parquet", "events": "events.parquet", "visitors": "visitors.parquet"}
CONTENT_COLUMNS: tuple[str, ...] = (
    "id",
    "title",
    "url",
    "summary",
    "body",
    "content_type",
    "topics",
    "personas",
    "industries",
    "published_at",
    "updated_at",
    "jurisdictions",
    "policy_flags",
    "device_suitability",
)
EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "ts",
    "anon_id",
    "session_id",
    "surface_id",
    "content_id",
    "type",
    "device",
    "referrer",
    "page_type",
    "country",
    "time_of_day",
    "campaign",
)
OPTIONAL_EVENT_COLUMNS: tuple[str, ...] = ("context_json",)
"""Event columns a site may leave out (older histories); a missing one reads as null. `context_json` is the
request's context map as a JSON object, where `context.<key>` segment dimensions are read."""
EVENT_TYPES = ("impression", "click")

_ID_PREFIX: dict[str, str] = {
    "intent": "",
    "device_class": "",
    "recency": "",
    "price_sensitivity": "price",
    "topic_interest": "topic",
}
INTENT_LABELS: dict[str, str] = {
    "learn": "Learning-focused",
    "compare": "Comparison-focused",
    "buy": "Purchase-focused",
    "browse": "Browsing-focused",
}
INTENT_EVIDENCE: dict[str, dict[str, float]] = {
    "article": {"learn": 0.5, "browse": 0.5},
    "guide": {"learn": 1.0},
    "case_study": {"compare": 0.8, "learn": 0.2},
    "product": {"buy": 0.6, "compare": 0.4},
    "category": {"browse": 0.6, "compare": 0.4},
    "promotion": {"buy": 0.7, "browse": 0.3},
}
"""A hand-made guess of which intents a click on each content type suggests: the starting point of
`learn_intent_evidence`, which learns from the clicks what one click on a type says about each intent."""
NEW_VISITOR_DAYS = 14
"""A visitor first seen this many days before the build's `now` or later is "new", otherwise "returning"."""
PRICE_TIERS: tuple[str, ...] = ("low", "medium", "high")
PRICE_HIGH_SHARE, PRICE_MEDIUM_SHARE = 0.25, 0.10
"""Share of a visitor's clicks on promotions from which they count as highly / medium price-sensitive."""

COLD_START_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("device", "referrer_class", "page_type", "time_of_day"),
    ("device", "referrer_class", "page_type"),
    ("device", "referrer_class", "campaign"),
    ("device", "referrer_class"),
    ("device", "page_type"),
    ("campaign",),
    ("device",),
)
"""The key combinations cold-start rules are mined for; the edge tries the most specific first."""
INTENT_EVIDENCE_PATTERNS: tuple[tuple[str, ...], ...] = (EVIDENCE_KEYS, *COLD_START_PATTERNS)
"""The key combinations naive-Bayes intent rules are made for (`aura.batch.context_intent`)."""

EXPECTED_WORDS: dict[str, int] = {"article": 500, "guide": 700, "case_study": 500, "product": 200}
SHORT_TYPE_WORDS = 60

_LEXICON_POSITIVE = """
excellent great good delighted improve improved improvement improves effective easy simple reliable love loves happy
benefit benefits best win wins grow growth success successful trust free save exclusive enjoy bonus quick better clear
practical
"""
_LEXICON_NEGATIVE = """
risk risks costly failure failures fail fails serious struggle struggles slow broken confusing breach painful loss
worse expensive problem problems mistake mistakes ignoring attack attacks threat threats fraud exposure abandoned churn
unclear difficult
"""
_POSITIVE = frozenset(_LEXICON_POSITIVE.split())
_NEGATIVE = frozenset(_LEXICON_NEGATIVE.split())
_NEGATIONS = frozenset({"not", "no", "never", "without"})
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+")


@dataclass(frozen=True, eq=False)
class SiteTables:
    """The tables a build reads: content, the event log and (optionally) visitors, as polars frames.

    The event log may instead be the Path of its Parquet file (`read(..., scan_events=True)`): the build
    then scans it in DuckDB without loading it into Python.
    """

    content: pl.DataFrame
    events: pl.DataFrame | Path
    visitors: pl.DataFrame | None = None

    def __post_init__(self) -> None:
        for name, frame, columns in (
            ("content", self.content.lazy(), CONTENT_COLUMNS),
            ("events", self.event_frame(), EVENT_COLUMNS),
        ):
            missing = [c for c in columns if c not in frame.collect_schema().names()]
            if missing:
                raise InvalidRequest(f"site table {name} lacks the columns {', '.join(missing)}.")
        types = self.event_frame().select(pl.col("type").unique()).collect(engine="streaming")["type"]
        unknown = set(types.to_list()) - set(EVENT_TYPES)
        if unknown:
            raise InvalidRequest(f"site table events has unknown event types {sorted(map(str, unknown))}.")

    def write(self, out_dir: str | Path) -> Path:
        """Write the tables as Parquet files into `out_dir` and return it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.content.write_parquet(out / SITE_FILES["content"])
        self.event_frame().collect().write_parquet(out / SITE_FILES["events"])
        if self.visitors is not None:
            self.visitors.write_parquet(out / SITE_FILES["visitors"])
        return out

    def event_frame(self) -> pl.LazyFrame:
        """The event log as a LazyFrame (over its file when `events` is a Path)."""
        return pl.scan_parquet(self.events) if isinstance(self.events, Path) else self.events.lazy()

    @classmethod
    def read(cls, site_dir: str | Path, *, scan_events: bool = False) -> SiteTables:
        """Read a site directory written by `write` (visitors.parquet is optional); with `scan_events`
        the events stay in their file (`events` is its Path)."""
        site = Path(site_dir)
        if not site.is_dir():
            raise NotFound(f"site directory {site} does not exist.")
        frames: dict[str, pl.DataFrame | Path | None] = {}
        for name, file_name in SITE_FILES.items():
            path = site / file_name
            if not path.is_file():
                if name == "visitors":
                    frames[name] = None
                    continue
                raise NotFound(f"site directory {site} has no {file_name}.")
            try:
                if name == "events" and scan_events:
                    pl.scan_parquet(path).collect_schema()
                    frames[name] = path
                else:
                    frames[name] = pl.read_parquet(path)
            except (OSError, pl.exceptions.PolarsError) as exc:
                raise InvalidRequest(f"{path} is not readable Parquet: {exc}") from None
        return cls(content=frames["content"], events=frames["events"], visitors=frames["visitors"])


@dataclass(frozen=True)
class Segment:
    """A micro-segment: values of the leading `dimensions`; the dimensions after them are open (any value).

    >>> Segment(("learn", "mobile")).id
    'seg_learn_mobile'
    """

    values: tuple[str, ...] = ()
    dimensions: tuple[str, ...] = field(default=DEFAULT_DIMENSIONS, compare=False)
    """The build's dimensions; segments are compared by their values only, so every root is `GLOBAL`."""

    def value(self, dimension: str) -> str | None:
        """The segment's value of `dimension`, None when open or not a dimension."""
        fixed = dict(zip(self.dimensions, self.values, strict=False))
        return fixed.get(dimension)

    @property
    def intent(self) -> str | None:
        """The fixed intent, if intent is a fixed dimension."""
        return self.value("intent")

    @property
    def id(self) -> str:
        """`seg_learn_mobile_new`, `seg_learn_mobile_new_price_high`, `seg_learn_mobile`, `seg_learn`, `seg_global`;
        a dimension other than intent, device class and recency is prefixed by its name (`campaign_spring`),
        a `context.<key>` one by its key (`plan_enterprise`, see `_context_value_slug`)."""
        return _segment_id(self.values, self.dimensions)

    @property
    def name(self) -> str:
        """A readable name such as "Learning-focused Mobile Users (New)"."""
        if not self.values:
            return "Everyone"
        intent, device = self.value("intent"), self.value("device_class")
        head = INTENT_LABELS.get(intent, intent.capitalize()) if intent else "All"
        details = []
        for dimension, value in zip(self.dimensions, self.values, strict=False):
            if dimension == "recency":
                details.append(value.capitalize())
            elif dimension == "price_sensitivity":
                details.append(f"{value.capitalize()} Price Sensitivity")
            elif dimension not in ("intent", "device_class"):
                label = custom_context_key(dimension) or dimension
                details.append(f"{label.replace('_', ' ').capitalize()} {value}")
        suffix = f" ({', '.join(details)})" if details else ""
        return f"{head}{f' {device.capitalize()}' if device else ''} Users{suffix}"

    @property
    def depth(self) -> int:
        """How many dimensions the segment fixes."""
        return len(self.values)

    def parent(self) -> Segment:
        """The next coarser segment: the last fixed dimension opened (seg_global is its own parent)."""
        return Segment(self.values[:-1], self.dimensions)

    def features(self, modes: Mapping[str, str | None]) -> dict[str, str]:
        """The segment's features as shown to API callers: its fixed values, and the members' most common
        value (`modes`) of each descriptive attribute that is open (none for seg_global)."""
        features = dict(zip(self.dimensions, self.values, strict=False))
        if self.values:
            features |= {k: v for k, v in modes.items() if k not in features and v is not None}
        return features


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-") or "none"


CONTEXT_SLUG_LENGTH = 32
"""At most this many characters of a `context.<key>` value's slug go into a segment id."""


def _context_value_slug(value: str) -> str:
    """A site's free-form context value as it appears in a segment id: its slug, cut to CONTEXT_SLUG_LENGTH and
    followed by 8 hex digits of its sha256 unless it is the value itself, so distinct values never share an id
    (`enterprise`, `Enterprise Plus` -> `enterprise-plus-<digest>`)."""
    slug = _slug(value)[:CONTEXT_SLUG_LENGTH].strip("-")
    return slug if slug == value else f"{slug}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


@functools.lru_cache(maxsize=65536)
def _segment_id(values: tuple[str, ...], dimensions: tuple[str, ...]) -> str:
    """`Segment.id`, memoized: a build asks for it once per profiled visitor."""
    if not values:
        return GLOBAL_SEGMENT
    return "seg_" + "_".join(_id_part(d, v) for d, v in zip(dimensions, values, strict=False))


def _id_part(dimension: str, value: str) -> str:
    """One dimension's part of a segment id."""
    key = custom_context_key(dimension)
    if key is not None:
        return f"{key}_{_context_value_slug(value)}"
    prefix = _ID_PREFIX.get(dimension, dimension)
    return f"{prefix}_{_slug(value)}" if prefix else _slug(value)


GLOBAL = Segment()


def count_syllables(word: str) -> int:
    """Estimate the syllables of an English word from its vowel groups (0 for a word without letters)."""
    word = re.sub(r"[^a-z]", "", word.lower())
    if not word:
        return 0
    if len(word) <= 3:
        return 1
    word = re.sub(r"(?:[^laeiouy]es|ed|[^laeiouy]e)$", "", word)
    word = re.sub(r"^y", "", word)
    return max(1, len(re.findall(r"[aeiouy]{1,2}", word)))


def flesch_kincaid_grade(text: str) -> float:
    """Flesch-Kincaid grade level: 0.39 * words/sentence + 11.8 * syllables/word - 15.59 (0 for no words).

    >>> round(flesch_kincaid_grade("The cat sat on the mat."), 2)
    -1.45
    """
    words = _WORD.findall(text)
    if not words:
        return 0.0
    sentences = max(1, sum(1 for part in _SENTENCE_END.split(text) if _WORD.search(part)))
    syllables = sum(count_syllables(w) for w in words)
    return 0.39 * len(words) / sentences + 11.8 * syllables / len(words) - 15.59


def sentiment(text: str) -> float:
    """Lexicon sentiment in (-1, 1): (positive - negative) / (positive + negative + 2); a negation flips the
    polarity of the next two words."""
    positive = negative = 0
    flip_until = -1
    for i, word in enumerate(w.lower() for w in _WORD.findall(text)):
        if word in _NEGATIONS:
            flip_until = i + 2
            continue
        polarity = (word in _POSITIVE) - (word in _NEGATIVE)
        if i <= flip_until:
            polarity = -polarity
        positive += polarity > 0
        negative += polarity < 0
    return (positive - negative) / (positive + negative + 2)


def quality_score(content_type: str, title: str, summary: str | None, body: str | None, grade: float) -> float:
    """A 0-1 editorial heuristic: body length for the type, paragraphs, title and summary length, readability."""
    body = body or ""
    words = len(_WORD.findall(body))
    expected = EXPECTED_WORDS.get(content_type, SHORT_TYPE_WORDS)
    length = min(1.0, words / expected)
    paragraphs = sum(1 for p in body.split("\n\n") if p.strip())
    structure = min(1.0, paragraphs / (3 if expected > SHORT_TYPE_WORDS else 1))
    title_ok = 1.0 if 20 <= len(title) <= 70 else 0.5
    summary_ok = 1.0 if summary and 40 <= len(summary) <= 200 else 0.5
    readability = 1.0 - 0.5 * min(1.0, max(0.0, 6.0 - grade, grade - 14.0) / 8.0)
    return 0.35 * length + 0.2 * structure + 0.15 * title_ok + 0.15 * summary_ok + 0.15 * readability


def freshness_scores(published_at: np.ndarray, now: datetime, half_life_days: float) -> np.ndarray:
    """exp(-ln 2 * age / half-life) for datetime64 publication times; content from the future scores 1."""
    now64 = np.datetime64(now.astimezone(UTC).replace(tzinfo=None), "ms")
    age_days = np.maximum((now64 - published_at.astype("datetime64[ms]")) / np.timedelta64(1, "D"), 0.0)
    return np.exp(-math.log(2.0) * age_days / half_life_days)


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
    """Cluster rows of `points` into `k` clusters (k-means++ seeding, Lloyd iterations); return int32 labels."""
    n = points.shape[0]
    k = max(1, min(k, n))
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    rng = np.random.default_rng(seed)
    x = points.astype(np.float64)
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    nearest = ((x - centers[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = nearest.sum()
        pick = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centers[j] = x[pick]
        nearest = np.minimum(nearest, ((x - centers[j]) ** 2).sum(axis=1))
    labels = np.full(n, -1)
    squared = (x**2).sum(axis=1)[:, None]
    for _ in range(iterations):
        new_labels = (squared - 2 * x @ centers.T + (centers**2).sum(axis=1)[None, :]).argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, x)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    return labels.astype(np.int32)


def topic_clusters(
    content_types: Sequence[str], topics: Sequence[Sequence[str] | None], embeddings: np.ndarray, seed: int
) -> np.ndarray:
    """The topic cluster of every item, for the diversity rule: k-means over the embeddings with each content
    type's mean embedding taken out, into as many clusters as the catalogue has primary (first) topic tags,
    or sqrt(n / 2) without tags.

    The embeddings of "title. summary" group items by content type more than by topic (titles and summaries
    follow per-type templates); without each type's mean, what is left is mostly what the item is about.
    """
    centred = embeddings.astype(np.float64)
    kinds = np.asarray(content_types, dtype=object)
    for kind in set(content_types):
        rows = kinds == kind
        if rows.sum() > 1:
            centred[rows] -= centred[rows].mean(axis=0)
    centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    primary = {tags[0].strip().lower() for tags in topics if tags}
    k = len(primary) or max(1, round(math.sqrt(len(centred) / 2)))
    return kmeans(centred, k, seed)


def content_features(
    content: pl.DataFrame,
    embeddings: np.ndarray,
    *,
    policies: Policies,
    now: datetime,
    seed: int,
) -> pa.Table:
    """The bundle's content table: the CMS columns plus complexity, sentiment, freshness, quality, clusters."""
    bodies = content["body"].fill_null("").to_list()
    texts = [
        f"{t or ''}. {s or ''}\n\n{b}" for t, s, b in zip(content["title"], content["summary"], bodies, strict=True)
    ]
    grades = [flesch_kincaid_grade(b) for b in bodies]
    quality = [
        quality_score(k, t, s, b, g)
        for k, t, s, b, g in zip(
            content["content_type"], content["title"], content["summary"], bodies, grades, strict=True
        )
    ]
    freshness = freshness_scores(content["published_at"].to_numpy(), now, policies.decisioning.freshness.half_life_days)
    flat = pa.array(embeddings.astype(np.float32).ravel(), type=pa.float32())
    frame = content.select(CONTENT_COLUMNS).with_columns(
        pl.Series("sentiment", [sentiment(t) for t in texts], dtype=pl.Float32),
        pl.Series("complexity", grades, dtype=pl.Float32),
        pl.Series("freshness_score", freshness, dtype=pl.Float32),
        pl.Series("quality_score", quality, dtype=pl.Float32),
        pl.Series(
            "topic_cluster",
            topic_clusters(content["content_type"].to_list(), content["topics"].to_list(), embeddings, seed),
            dtype=pl.Int32,
        ),
    )
    table = frame.to_arrow()
    return table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, EMBEDDING_DIM)).select(
        SCHEMAS[CONTENT].names
    )


def embed_content(
    content: pl.DataFrame, embedder: TextEmbedder, progress: bool = False, chunk: int = 256
) -> np.ndarray:
    """Embed "title. summary" of every content row into unit vectors, (n, 384) float32."""
    texts = [f"{t}. {s or ''}".strip() for t, s in zip(content["title"], content["summary"], strict=True)]
    out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
    with tqdm(total=len(texts), desc="embedding", unit="text", disable=None if progress else True) as bar:
        for start in range(0, len(texts), chunk):
            out[start : start + chunk] = embedder.embed(texts[start : start + chunk])
            bar.update(min(chunk, len(texts) - start))
    return out


def register_site(con: duckdb.DuckDBPyConnection, site: SiteTables) -> None:
    """Expose the site to SQL as `events` (with `referrer_class`, filled `time_of_day`) and `content`.

    `events` is a view: every query streams the event log (a Parquet file is scanned in place) and reads
    only the columns it uses. The session time zone is UTC, as on the edge, so an event's hour gives the
    same time of day on both. A missing `OPTIONAL_EVENT_COLUMNS` column reads as null, and so does a
    `context_json` that is not valid JSON.
    """
    con.execute("SET TimeZone = 'UTC'")
    present = set(site.event_frame().collect_schema().names())
    optional = [c if c in present else f"NULL::VARCHAR AS {c}" for c in OPTIONAL_EVENT_COLUMNS]
    columns = ", ".join([*EVENT_COLUMNS, *optional])
    if isinstance(site.events, Path):
        path = str(site.events).replace("'", "''")
        source = f"read_parquet('{path}')"
    else:
        con.register("site_events", site.events)
        source = "site_events"
    con.execute(f"CREATE TEMP VIEW raw_events AS SELECT {columns} FROM {source}")
    referrers = [r for (r,) in con.sql("SELECT DISTINCT coalesce(referrer, '') FROM raw_events").fetchall()]
    con.register(
        "referrer_classes",
        pa.table({"referrer": referrers, "referrer_class": [referrer_class(r) for r in referrers]}),
    )
    con.register("content", site.content.select("id", "content_type", "topics").to_arrow())
    register_intent_evidence(con, INTENT_EVIDENCE)
    hour_labels = ", ".join(f"'{time_of_day(h)}'" for h in range(24))
    con.execute(
        f"""
        CREATE TEMP VIEW events AS
        SELECT e.event_id, e.ts, e.anon_id, e.session_id, e.surface_id, e.content_id, e.type,
               lower(e.device) AS device, r.referrer_class, nullif(lower(e.page_type), '') AS page_type,
               nullif(upper(e.country), '') AS country,
               coalesce(nullif(lower(e.time_of_day), ''), [{hour_labels}][hour(e.ts) + 1]) AS time_of_day,
               nullif(e.campaign, '') AS campaign,
               CASE WHEN json_valid(e.context_json::VARCHAR) THEN e.context_json::VARCHAR END AS context_json
        FROM raw_events e
        JOIN referrer_classes r ON r.referrer = coalesce(e.referrer, '')
        """
    )


def _sql_name(dimension: str) -> str:
    """A dimension as a quoted SQL identifier (`context.<key>` holds a dot)."""
    return f'"{dimension}"'


def _event_context_value(dimension: str) -> str:
    """The SQL expression over `events` of a context dimension: its column, or for `context.<key>` the
    key's value in `context_json` (null when absent or empty)."""
    key = custom_context_key(dimension)
    if key is None:
        return dimension
    return f"""nullif(json_extract_string(context_json, '$."{key}"'), '')"""


def register_intent_evidence(con: duckdb.DuckDBPyConnection, evidence: Mapping[str, Mapping[str, float]]) -> None:
    """Expose an evidence table (content type -> intent -> weight) to SQL as `intent_evidence`."""
    rows = [(t, i, w) for t, weights in evidence.items() for i, w in weights.items()]
    con.register(
        "intent_evidence",
        pa.table(dict(zip(("content_type", "intent", "weight"), zip(*rows, strict=True), strict=True))),
    )


def user_profiles(
    con: duckdb.DuckDBPyConnection, min_events: int, now: datetime, context: Sequence[str] = ()
) -> pa.Table:
    """Infer each visitor's intent, device class, recency, price sensitivity and topic interest.

    Only visitors with at least `max(min_events, 1)` clicks get a profile (the rest are cold start); the
    intent is the argmax of the summed `intent_evidence` weights of their clicks (log-likelihoods, see
    `learn_intent_evidence`) and its confidence the intent's probability (their softmax). Visitors first
    seen within `NEW_VISITOR_DAYS` before `now` are new, others returning. The topic interest is the
    topic tag of most of their clicks (ties: the first by name).
    Each dimension of `context` (of `CONTEXT_DIMENSIONS`, or `context.<key>`: that key of the events'
    `context_json`) adds a column of that name: the visitor's most common value (ties: the first by
    value), or "none" when their events never carry one.
    """
    unknown = [c for c in context if c not in CONTEXT_DIMENSIONS and custom_context_key(c) is None]
    if unknown:
        raise ConfigError(f"segment dimensions {unknown} are neither {list(CONTEXT_DIMENSIONS)} nor context.<key>.")
    context_ctes = "".join(
        f"""
        ctx_{i} AS (
            SELECT anon_id, value FROM (SELECT anon_id, {_event_context_value(key)} AS value FROM events)
            WHERE value IS NOT NULL GROUP BY anon_id, value
            QUALIFY row_number() OVER (PARTITION BY anon_id ORDER BY count(*) DESC, value) = 1
        ),"""
        for i, key in enumerate(context)
    )
    context_columns = "".join(f", coalesce(ctx_{i}.value, 'none') AS {_sql_name(key)}" for i, key in enumerate(context))
    context_joins = " ".join(f"LEFT JOIN ctx_{i} ON ctx_{i}.anon_id = a.anon_id" for i in range(len(context)))
    return con.sql(
        f"""
        WITH {context_ctes} activity AS (
            SELECT anon_id, count(*) FILTER (WHERE type = 'click') AS clicks, min(ts) AS first_seen
            FROM events GROUP BY anon_id
        ),
        devices AS (
            SELECT anon_id, device, row_number() OVER (PARTITION BY anon_id ORDER BY count(*) DESC, device) AS rank
            FROM events GROUP BY anon_id, device
        ),
        clicked AS (
            SELECT e.anon_id, c.content_type, c.topics
            FROM events e JOIN content c ON c.id = e.content_id WHERE e.type = 'click'
        ),
        interests AS (
            SELECT anon_id, topic FROM (SELECT anon_id, lower(trim(unnest(topics))) AS topic FROM clicked)
            GROUP BY anon_id, topic
            QUALIFY row_number() OVER (PARTITION BY anon_id ORDER BY count(*) DESC, topic) = 1
        ),
        scores AS (
            SELECT k.anon_id, w.intent, sum(w.weight) AS score
            FROM clicked k JOIN intent_evidence w USING (content_type) GROUP BY k.anon_id, w.intent
        ),
        odds AS (SELECT *, exp(score - max(score) OVER (PARTITION BY anon_id)) AS odds FROM scores),
        best AS (
            SELECT anon_id, intent, odds / sum(odds) OVER (PARTITION BY anon_id) AS confidence,
                   row_number() OVER (PARTITION BY anon_id ORDER BY score DESC, intent) AS rank
            FROM odds
        ),
        promo AS (
            SELECT anon_id, avg(CASE WHEN content_type = 'promotion' THEN 1.0 ELSE 0.0 END) AS share
            FROM clicked GROUP BY anon_id
        )
        SELECT a.anon_id, b.intent, b.confidence, d.device AS device_class,
               CASE WHEN a.first_seen >= $new_since THEN 'new' ELSE 'returning' END AS recency,
               CASE WHEN p.share >= $high THEN 'high' WHEN p.share >= $medium THEN 'medium' ELSE 'low' END
                   AS price_sensitivity,
               coalesce(i.topic, 'none') AS topic_interest, a.clicks{context_columns}
        FROM activity a
        JOIN best b ON b.anon_id = a.anon_id AND b.rank = 1
        JOIN devices d ON d.anon_id = a.anon_id AND d.rank = 1
        JOIN promo p ON p.anon_id = a.anon_id
        LEFT JOIN interests i ON i.anon_id = a.anon_id
        {context_joins}
        WHERE a.clicks >= $min_events
        ORDER BY a.anon_id
        """,
        params={
            "high": PRICE_HIGH_SHARE,
            "medium": PRICE_MEDIUM_SHARE,
            "min_events": max(1, min_events),
            "new_since": now - timedelta(days=NEW_VISITOR_DAYS),
        },
    ).to_arrow_table()


def leaf_of(profile: Mapping[str, Any], dimensions: tuple[str, ...]) -> Segment:
    """The finest segment a profile falls into (up to its first missing value)."""
    values = [profile[d] for d in dimensions]
    depth = values.index(None) if None in values else len(values)
    return Segment(tuple(values[:depth]), dimensions)


def choose_segments(leaf_counts: Mapping[Segment, int], k: int, n_max: int | None = None) -> dict[Segment, int]:
    """Decide which segments to emit and how many visitors each gets.

    A segment with fewer than `k` visitors is merged into its parent (opening its last dimension: price,
    then recency, device, intent, then `seg_global`), deepest first, so that siblings can pool into a
    parent that reaches `k`. Then, while more than `n_max` segments remain, the smallest one is merged.
    `seg_global` is always emitted.
    """
    counts: dict[Segment, int] = defaultdict(int, leaf_counts)
    counts[GLOBAL] += 0
    while True:
        small = [s for s in counts if s != GLOBAL and counts[s] < k]
        if small:
            victim = min(small, key=lambda s: (-s.depth, counts[s], s.id))
        elif n_max is not None and len(counts) > n_max:
            victim = min((s for s in counts if s != GLOBAL), key=lambda s: (counts[s], -s.depth, s.id))
        else:
            return dict(counts)
        counts[victim.parent()] += counts.pop(victim)


def resolve(leaf: Segment, emitted: Mapping[Segment, int]) -> Segment:
    """The emitted segment a leaf's visitors are assigned to: the leaf or its nearest emitted ancestor."""
    while leaf not in emitted:
        leaf = leaf.parent()
    return leaf


def segment_table(emitted: Mapping[Segment, int], profiles: pa.Table, dimensions: tuple[str, ...]) -> pa.Table:
    """The segment catalogue with features; an open descriptive attribute (price sensitivity) shows its
    members' most common value (ties: the lowest tier)."""
    tallies: dict[Segment, Counter[str]] = defaultdict(Counter)
    for row in profiles.select(list(dict.fromkeys([*dimensions, "price_sensitivity"]))).to_pylist():
        segment = leaf_of(row, dimensions)
        while True:
            tallies[segment][row["price_sensitivity"]] += 1
            if not segment.values:
                break
            segment = segment.parent()
    rows = []
    for segment in sorted(emitted, key=lambda s: s.id):
        counts = tallies.get(segment)
        mode = max(PRICE_TIERS, key=lambda t: (counts[t], -PRICE_TIERS.index(t))) if counts else None
        rows.append(
            {
                "segment_id": segment.id,
                "name": segment.name,
                "intent": segment.intent,
                "features_json": json.dumps(segment.features({"price_sensitivity": mode}), sort_keys=True),
            }
        )
    return pa.Table.from_pylist(rows, schema=SCHEMAS[SEGMENTS])


@dataclass(frozen=True)
class Segmentation:
    """The segment catalogue and the visitors' assignments of one build."""

    emitted: dict[Segment, int]
    """Emitted segments and how many visitors each has as members (k-anonymity counts these; a member whose
    intent is uncertain may be assigned an ancestor, see `confident_segment`)."""
    segments: pa.Table
    user_segments: pa.Table
    user_leaves: pa.Table
    """anon_id and the profile dimensions of every assigned visitor, for pooling events into cells."""
    members: pa.Table
    """user_id and the most specific emitted segment of every assigned visitor, whatever its confidence."""


def assign_segments(
    con: duckdb.DuckDBPyConnection,
    policies: Policies,
    now: datetime,
    n_segments_max: int | None = None,
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS,
    intent_model: IntentModel | None = None,
    topics: Sequence[str] = (),
) -> Segmentation:
    """Profile the visitors of the registered site, choose k-anonymous segments and assign visitors.

    With an `intent_model` that chose LightGBM, its predictions replace the evidence argmax as each
    profiled visitor's intent and confidence.
    """
    context = [d for d in dimensions if d not in PROFILE_DIMENSIONS]
    profiles = user_profiles(con, policies.segmentation.cold_start.min_events, now, context)
    if intent_model is not None and intent_model.use_model and profiles.num_rows:
        predicted = assign_intents(con, intent_model, profiles["anon_id"].to_pylist(), now, INTENT_EVIDENCE, topics)
        rows = [
            predicted.get(row["anon_id"], (row["intent"], row["confidence"]))
            for row in profiles.select(["anon_id", "intent", "confidence"]).to_pylist()
        ]
        for column, values, kind in (
            ("intent", [r[0] for r in rows], pa.string()),
            ("confidence", [r[1] for r in rows], pa.float64()),
        ):
            profiles = profiles.set_column(profiles.schema.get_field_index(column), column, pa.array(values, kind))
    leaves = [leaf_of(row, dimensions) for row in profiles.to_pylist()]
    emitted = choose_segments(Counter(leaves), policies.segmentation.fairness.k_anonymity_threshold, n_segments_max)
    members = [resolve(leaf, emitted) for leaf in leaves]
    threshold = policies.segmentation.confidence.assignment_threshold
    assigned = [
        confident_segment(member, confidence, emitted, threshold)
        for member, confidence in zip(members, profiles["confidence"].to_pylist(), strict=True)
    ]
    user_segments = pa.table(
        {
            "user_id": profiles["anon_id"],
            "segment_id": [segment.id for segment, _ in assigned],
            "confidence": pa.array([confidence for _, confidence in assigned], pa.float32()),
            "assigned_at": pa.array([now] * profiles.num_rows, type=pa.timestamp("ms", tz="UTC")),
        },
        schema=SCHEMAS[USER_SEGMENTS],
    )
    return Segmentation(
        emitted=emitted,
        segments=segment_table(emitted, profiles, dimensions),
        user_segments=user_segments,
        user_leaves=profiles.select(["anon_id", *dimensions]),
        members=pa.table({"user_id": profiles["anon_id"], "segment_id": [m.id for m in members]}),
    )


def confident_segment(
    member: Segment, intent_confidence: float, emitted: Mapping[Segment, int], threshold: float
) -> tuple[Segment, float]:
    """A visitor's assignment and the probability that they belong to it: their segment when its intent
    (the one inferred dimension) is that likely, else its nearest emitted ancestor that leaves intent open
    (certain, as the other dimensions are read off the history). When only seg_global would be certain,
    the segment stays with its low confidence, so the edge falls back to cold-start rules."""
    segment = member
    while segment.values:
        confidence = intent_confidence if segment.intent is not None else 1.0
        if confidence >= threshold:
            return segment, confidence
        segment = segment.parent()
        while segment not in emitted:
            segment = segment.parent()
    return member, intent_confidence


def segment_keys(segments: Sequence[Segment], dimensions: tuple[str, ...]) -> pa.Table:
    """The segment catalogue as `posterior_counts` matches it: segment_id and each dimension (null: any)."""
    return pa.table(
        {
            "segment_id": pa.array([s.id for s in segments], pa.string()),
            **{d: pa.array([s.value(d) for s in segments], pa.string()) for d in dimensions},
        }
    )


def cold_start_table(
    con: duckdb.DuckDBPyConnection,
    members: pa.Table,
    emitted: Iterable[Segment],
    min_support: int,
    min_confidence: float,
    patterns: tuple[tuple[str, ...], ...] = COLD_START_PATTERNS,
) -> pa.Table:
    """Rules from a visitor's first-event context to the most specific segment that visitors in that
    context probably belong to.

    `members` maps each profiled visitor (user_id) to their most specific emitted segment (segment_id).
    For every combination of context values of each pattern seen for at least `min_support` of them, the
    rule names the deepest emitted segment other than seg_global (ties: the larger share) that covers at
    least `min_confidence` of the context's visitors, with that share as its confidence: a visitor of a
    segment also belongs to its ancestors. A context whose visitors only seg_global covers gets no rule.
    A pattern names `COLD_START_KEYS` and `context.<key>` dimensions (see `cold_start_patterns`); the rule
    holds the latter as its `context_json` object. Keys a pattern does not use are null (any).
    """
    con.register("assigned", members)
    custom = sorted({k for p in patterns for k in p if custom_context_key(k) is not None})
    used = [k for k in COLD_START_KEYS if any(k in p for p in patterns)] + custom
    grouped = ", ".join(map(_sql_name, used))
    first_values = ", ".join(f"{_sql_name(k)} := {_event_context_value(k)}" for k in used)
    sets = ", ".join(f"({', '.join(map(_sql_name, (*p, 'segment_id')))})" for p in patterns)
    # GROUPING() sets a key's bit (the last key is bit 0) when the grouping set leaves the key out.
    used_key_present = " AND ".join(
        f"(((grouping_id >> {len(used) - 1 - i}) & 1) = 1 OR {_sql_name(key)} IS NOT NULL)"
        for i, key in enumerate(used)
    )
    counts = con.sql(
        f"""
        WITH first_context AS (
            SELECT anon_id, unnest(arg_min(struct_pack({first_values}), (ts, event_id)))
            FROM events GROUP BY anon_id
        ),
        labeled AS (
            SELECT f.*, a.segment_id FROM first_context f JOIN assigned a ON a.user_id = f.anon_id
        ),
        counts AS (
            SELECT {grouped}, segment_id, GROUPING({grouped}) AS grouping_id, count(*) AS n
            FROM labeled GROUP BY GROUPING SETS ({sets})
        )
        SELECT grouping_id, {grouped}, segment_id, n, sum(n) OVER (PARTITION BY grouping_id, {grouped}) AS support
        FROM counts
        WHERE {used_key_present}
        QUALIFY support >= $min_support
        ORDER BY grouping_id DESC, {grouped}, segment_id
        """,
        params={"min_support": min_support},
    ).fetchall()
    ancestors = _emitted_ancestors(emitted)
    covered: dict[tuple[Any, ...], Counter[Segment]] = defaultdict(Counter)
    supports: dict[tuple[Any, ...], int] = {}
    for grouping_id, *values, segment_id, n, support in counts:
        context = (grouping_id, *values)
        supports[context] = support
        for segment in ancestors[segment_id]:
            covered[context][segment] += n
    rules = []
    for context, tally in covered.items():
        support = supports[context]
        confident = [s for s, n in tally.items() if n / support >= min_confidence]
        if confident:
            best = max(confident, key=lambda s: (s.depth, tally[s], s.id))
            values = dict(zip(used, context[1:], strict=True))
            fixed = {k: values[k] for k in used if k not in custom}
            required = {custom_context_key(k): values[k] for k in custom if values[k] is not None}
            context_json = json.dumps(required, sort_keys=True) if required else None
            rules.append(
                {**fixed, "context_json": context_json, "segment_id": best.id, "confidence": tally[best] / support}
            )
    return pa.Table.from_pylist(rules, schema=SCHEMAS[COLD_START])


def cold_start_patterns(dimensions: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The patterns cold-start rules are mined for: COLD_START_PATTERNS, then for the `context.<key>`
    segment dimensions all of them together (when there are several) and each with and without `device`."""
    custom = [d for d in dimensions if custom_context_key(d) is not None]
    together = [tuple(custom)] if len(custom) > 1 else []
    return COLD_START_PATTERNS + tuple(together) + tuple(p for d in custom for p in (("device", d), (d,)))


def _emitted_ancestors(emitted: Iterable[Segment]) -> dict[str, list[Segment]]:
    """For each emitted segment's id, the segment and its emitted ancestors, seg_global left out."""
    catalogue = set(emitted)
    result = {}
    for segment in catalogue:
        chain, node = [], segment
        while node.values:
            if node in catalogue:
                chain.append(node)
            node = node.parent()
        result[segment.id] = chain
    return result


def eligible_content(content: pl.DataFrame, surfaces: Mapping[str, Surface]) -> dict[str, list[str]]:
    """Content ids per surface, limited to its eligible content types, in id order."""
    result = {}
    for surface_id, surface in sorted(surfaces.items()):
        types = surface.eligible_content_types
        rows = content if not types else content.filter(pl.col("content_type").is_in(list(types)))
        ids = sorted(rows["id"].to_list())
        if not ids:
            raise ConfigError(
                f"surfaces.yaml: surfaces.{surface_id} admits content types {list(types)}, "
                "but the site has no content of those types."
            )
        result[surface_id] = ids
    return result


DUCKDB_MEMORY_LIMIT = "2GB"
"""DuckDB's memory cap in a build; past it, DuckDB spills to a temporary directory."""


@contextmanager
def batch_connection(
    memory_limit: str = DUCKDB_MEMORY_LIMIT, threads: int | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection capped at `memory_limit` (e.g. "2GB"), spilling into a temporary
    directory, with `threads` worker threads (default: one per core)."""
    with tempfile.TemporaryDirectory(prefix="aura-duckdb-") as spill:
        config: dict[str, str | int] = {"memory_limit": memory_limit, "temp_directory": spill}
        if threads is not None:
            config["threads"] = threads
        with duckdb.connect(config=config) as con:
            yield con


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[step] = round(time.perf_counter() - start, 3)


def build_bundle(
    site: SiteTables,
    *,
    policies: Policies,
    surfaces: Mapping[str, Surface],
    out_dir: str | Path,
    parent_version: str | None = None,
    embedder: TextEmbedder | None = None,
    now: datetime | None = None,
    n_segments_max: int | None = None,
    dimensions: Sequence[str] | None = None,
    seed: int = 0,
    bundle_version: str | None = None,
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
    previous_dir: str | Path | None = None,
    heldout: pa.Table | None = None,
    ope_margin: float = DEFAULT_MARGIN,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    duckdb_memory_limit: str = DUCKDB_MEMORY_LIMIT,
    duckdb_threads: int | None = None,
) -> Manifest:
    """Build a bundle from site tables into `out_dir/<version>` and return its manifest.

    `now` is the reference time of freshness, assignments and posterior decay (default: the last
    event, so rebuilding the same data gives the same tables). `n_segments_max` caps the catalogue
    (seg_global included); `dimensions` are the segment hierarchy, coarsest first (any of
    `PROFILE_DIMENSIONS` and `CONTEXT_DIMENSIONS`, or `context.<key>` for a key of the events'
    `context_json`, as `aura.config.check_dimensions` accepts; default: the policies'
    `segmentation.dimensions`).
    `embedder` defaults to the packaged MiniLM. `half_life_days` is the decay of the posteriors'
    evidence. With `previous_dir` (a bundle directory) the posteriors continue from its decayed
    statistics and read only newer events, unless it has none or decays differently (then: a full
    rebuild). With `previous_dir` (the serving bundle) and `heldout` logged decisions
    (`aura.batch.ope.LOGGED_SCHEMA`), an off-policy evaluation of the new posteriors against the
    serving ones goes into `reports["ope"]`, with `ope_margin` deciding its `passed`. `log` receives one
    line per finished step. The SQL runs in DuckDB capped at `duckdb_memory_limit` with `duckdb_threads`
    threads (see `batch_connection`).
    """
    if not surfaces:
        raise ConfigError("surfaces.yaml: at least one surface is needed to build a bundle.")
    if n_segments_max is not None and n_segments_max < 1:
        raise ConfigError(f"n_segments_max must be at least 1, got {n_segments_max}.")
    dims = check_dimensions(
        policies.segmentation.dimensions if dimensions is None else dimensions, "segment dimensions"
    )
    say = log or (lambda _line: None)
    timings: dict[str, float] = {}
    k = policies.segmentation.fairness.k_anonymity_threshold
    threshold = policies.segmentation.confidence.assignment_threshold

    with _timed(timings, "embedding"):
        vectors = embed_content(site.content, embedder or TextEmbedder.load(), progress)

    with batch_connection(duckdb_memory_limit, duckdb_threads) as con:
        with _timed(timings, "events"):
            register_site(con, site)
            events_used, visitors, last = con.sql(
                "SELECT count(*), count(DISTINCT anon_id), max(ts) FROM events"
            ).fetchall()[0]
        if now is None:
            now = last if isinstance(last, datetime) else datetime.now(UTC)
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        with _timed(timings, "content"):
            content = content_features(site.content, vectors, policies=policies, now=now, seed=seed)
        say(f"content: {content.num_rows} items, {len(set(content['topic_cluster'].to_pylist()))} topic clusters")

        with _timed(timings, "segments"):
            topics = sorted({t for ts in site.content["topics"].to_list() if ts for t in ts})
            register_intent_evidence(
                con, learn_intent_evidence(con, INTENT_EVIDENCE, policies.segmentation.cold_start.min_events)
            )
            intent_model = train_intent_model(con, INTENT_EVIDENCE, topics, seed)
            segmentation = assign_segments(
                con, policies, now, n_segments_max, dims, intent_model=intent_model, topics=topics
            )
        say(
            "intent: "
            + (
                f"LightGBM {intent_model.stats['model_heldout_accuracy']:.1%} vs evidence argmax "
                f"{intent_model.stats['evidence_heldout_accuracy']:.1%} held-out accuracy, using "
                + ("LightGBM" if intent_model.use_model else "the evidence argmax")
                if "model_heldout_accuracy" in intent_model.stats
                else "too few labelled visitors for LightGBM, using the evidence argmax"
            )
        )
        con.register("assigned_users", segmentation.user_segments.select(["user_id"]))
        sessions, assigned_sessions = con.sql(
            """
            SELECT count(DISTINCT session_id),
                   count(DISTINCT session_id) FILTER (WHERE anon_id IN (SELECT user_id FROM assigned_users))
            FROM events
            """
        ).fetchall()[0]
        say(
            f"segments: {len(segmentation.emitted)} emitted, {segmentation.user_segments.num_rows} visitors "
            f"assigned (k = {k}), covering {assigned_sessions:,} of {sessions:,} sessions"
        )
        with _timed(timings, "posteriors"):
            ordered = sorted(segmentation.emitted, key=lambda s: s.id)
            eligible = eligible_content(site.content, surfaces)
            previous = read_previous(previous_dir) if previous_dir is not None else None
            if previous is not None and previous.half_life_days != half_life_days:
                say(f"posteriors: {previous_dir} decays with another half-life; rebuilding in full")
                previous = None
            counts = posterior_counts(
                con,
                segment_keys(ordered, dims),
                segmentation.user_leaves,
                eligible,
                as_of=now,
                half_life_days=half_life_days,
                previous=previous,
                content_types=dict(zip(site.content["id"], site.content["content_type"], strict=True)),
            )
            prior_mean, prior_strength = cohort_priors(counts, site.content["id"].to_list(), vectors)
            posteriors = posterior_table(
                counts,
                prior_mean,
                prior_strength,
                surfaces,
                len(ordered),
                seed,
                progress,
                variance_scale=policies.decisioning.exploration.posterior_variance_scale,
            )
        incremental_from = Path(previous_dir).name if previous is not None else None
        say(
            f"posteriors: {len(eligible) * len(ordered)} cells, {posteriors.num_rows} rows, "
            + (f"continued from {incremental_from}" if incremental_from else "full rebuild")
        )
        with _timed(timings, "cold_start"):
            cold_start = cold_start_table(
                con,
                segmentation.members,
                segmentation.emitted,
                min_support=k,
                min_confidence=policies.segmentation.confidence.holdout_below,
                patterns=cold_start_patterns(dims),
            )
            inferred = context_intent_rules(
                con,
                assigned_intents(segmentation.user_segments, segmentation.emitted),
                segmentation.emitted,
                policies.segmentation.confidence.holdout_below,
                INTENT_EVIDENCE_PATTERNS,
                min_visitors=k,
            )
            cold_start = with_inferred_rules(cold_start, inferred, {s.id: s.depth for s in segmentation.emitted})
        say(f"cold start: {cold_start.num_rows} rules ({len(inferred)} inferred from context by naive Bayes)")

    version = bundle_version or new_bundle_version()
    ope: dict[str, Any] = {}
    if previous_dir is not None and heldout is not None and heldout.num_rows:
        with _timed(timings, "ope"):
            report = compare(
                heldout,
                SlatePolicy(posteriors, version),
                SlatePolicy.from_bundle(previous_dir),
                margin=ope_margin,
                variance_scale=policies.decisioning.exploration.posterior_variance_scale,
            )
        ope[OPE_REPORT] = report.to_dict()
        say(
            f"off-policy: DR {report.candidate.dr:.4f} vs serving {report.serving.dr:.4f} per decision "
            f"({report.relative_change:+.1%}) on {report.candidate.decisions} held-out decisions"
        )

    assigned = segmentation.user_segments.num_rows
    confidence = segmentation.user_segments["confidence"].to_numpy()
    global_rows = counts["segment_id"].to_numpy(zero_copy_only=False) == GLOBAL_SEGMENT
    stats = {
        "content_items": content.num_rows,
        "topic_clusters": len(set(content["topic_cluster"].to_pylist())),
        "segments": len(segmentation.emitted),
        "visitors": visitors,
        "users_assigned": assigned,
        "segment_coverage": round(assigned / visitors, 4) if visitors else 0.0,
        "session_coverage": round(assigned_sessions / sessions, 4) if sessions else 0.0,
        "confident_assignments": round(float(np.mean(confidence >= threshold)), 4) if assigned else 0.0,
        "surfaces": len(eligible),
        "cells": len(eligible) * len(ordered),
        "posterior_rows": posteriors.num_rows,
        "events_used": events_used,
        "clicks_on_eligible": round(float(counts["clicks"].to_numpy()[global_rows].sum()), 3),
        "new_items_with_cohort_prior": int(np.sum(prior_strength[global_rows] != PRIOR_STRENGTH)),
        "cold_start_rules": cold_start.num_rows,
        "intent_method": "lightgbm" if intent_model.use_model else "evidence",
        **{f"intent_{k}": v for k, v in intent_model.stats.items() if k != "use_model"},
        "k_anonymity_threshold": k,
    }
    reports = {
        "segment_sizes": {s.id: n for s, n in sorted(segmentation.emitted.items(), key=lambda kv: kv[0].id)},
        "build_seconds": timings,
        "now": now.isoformat(),
        REPORT_KEY: stats_report(now, half_life_days, incremental_from),
        **ope,
    }
    manifest = write_bundle(
        out_dir,
        {
            CONTENT: content,
            SEGMENTS: segmentation.segments,
            POSTERIORS: posteriors,
            USER_SEGMENTS: segmentation.user_segments,
            COLD_START: cold_start,
        },
        bundle_version=version,
        policy_version=policies.policy_version,
        parent_version=parent_version,
        stats=stats,
        reports=reports,
    )
    return manifest
