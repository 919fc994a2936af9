"""A seeded synthetic website: content, visitors with a latent intent, and their logged sessions.

The click model is the ground truth the batch has to recover: the probability of a click depends on
the visitor's intent x the content type, topic interests x content topics, expertise x content
personas, and device x content type and suitability. `SyntheticSite.click_probability` exposes it so
a closed-loop simulator can replay new decisions against the same truth.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from aura.batch.build import SiteTables
from aura.config import Surface
from aura.context import DEVICES, jurisdictions_of, time_of_day

SITE_EPOCH = datetime(2025, 10, 1, tzinfo=UTC)
"""The default "now" of a generated site, so that a seed alone fixes every timestamp."""
SITE_META = "site.json"

CONTENT_TYPES: tuple[str, ...] = ("article", "guide", "case_study", "product", "category", "promotion")
INTENTS: tuple[str, ...] = ("learn", "compare", "buy", "browse")
PERSONAS: tuple[str, ...] = ("beginner", "intermediate", "advanced")
PAGE_TYPES: tuple[str, ...] = ("home", "article", "blog", "search", "category", "product", "pricing")
CAMPAIGNS: tuple[str, ...] = ("summer_sale", "spring_webinar", "product_launch", "newsletter")

DEFAULT_SURFACES: dict[str, Surface] = {
    "homepage.hero": Surface(
        "homepage.hero", max_items=5, freshness_boost=0.5, eligible_content_types=("article", "guide", "case_study")
    ),
    "blog.index": Surface("blog.index", max_items=20, freshness_boost=1.0, eligible_content_types=("article", "guide")),
    "product_listing": Surface(
        "product_listing",
        max_items=20,
        freshness_boost=0.2,
        eligible_content_types=("product", "category"),
        cache_ttl=120,
    ),
    "promo.banner": Surface(
        "promo.banner",
        max_items=1,
        diversity=False,
        freshness_boost=0.3,
        eligible_content_types=("promotion",),
        allowed_policy_flags=("age_restricted",),
        cache_ttl=60,
    ),
}
"""The demo site's surfaces, as in config/surfaces.yaml."""

PLACEMENTS: dict[str, tuple[str, ...]] = {
    "homepage.hero": ("home",),
    "blog.index": ("blog", "article", "search"),
    "product_listing": ("category", "product", "pricing", "search"),
    "promo.banner": ("home", "product", "pricing", "category"),
}
"""Page types each demo surface renders on; any other surface renders on one seeded page type."""

SURFACE_BASE_CTR: dict[str, float] = {
    "homepage.hero": 0.07,
    "blog.index": 0.05,
    "product_listing": 0.05,
    "promo.banner": 0.04,
}
DEFAULT_BASE_CTR = 0.05
SHOWN_PER_RENDER = 4
"""Items of a surface a visitor actually sees per page view (the logged impressions)."""

# Click-rate multipliers of the ground truth: rows intent (or device), columns CONTENT_TYPES.
INTENT_TYPE_LIFT = np.array(
    [
        [1.6, 2.0, 0.9, 0.35, 0.4, 0.3],  # learn
        [0.6, 0.8, 1.8, 1.5, 1.5, 0.6],  # compare
        [0.35, 0.5, 0.8, 2.2, 1.3, 2.0],  # buy
        [1.1, 0.4, 0.5, 0.9, 1.8, 1.4],  # browse
    ]
)
DEVICE_TYPE_LIFT = np.array(
    [
        [1.1, 0.7, 0.6, 1.0, 1.0, 1.3],  # mobile
        [1.0, 1.2, 1.2, 1.0, 1.0, 0.8],  # desktop
        [1.0, 1.0, 0.9, 1.0, 1.0, 1.1],  # tablet
    ]
)
TOPIC_MATCH_LIFT, TOPIC_MISS_LIFT = 1.8, 0.8
PERSONA_MATCH_LIFT, PERSONA_MISS_LIFT = 1.3, 0.7
UNSUITED_DEVICE_LIFT = 0.2
MAX_CLICK_PROBABILITY = 0.6

TOPICS: dict[str, tuple[str, ...]] = {
    "marketing": (
        "email campaigns",
        "landing pages",
        "audience targeting",
        "brand awareness",
        "acquisition costs",
        "marketing automation",
        "lead scoring",
        "conversion funnels",
    ),
    "analytics": (
        "dashboards",
        "cohort analyses",
        "attribution models",
        "event tracking",
        "retention curves",
        "key metrics",
        "data visualizations",
        "churn predictions",
    ),
    "personalization": (
        "recommendations",
        "user segments",
        "real-time targeting",
        "content rankings",
        "behavioral signals",
        "customer profiles",
        "dynamic content",
        "contextual bandits",
    ),
    "ecommerce": (
        "checkout flows",
        "shopping carts",
        "product pages",
        "order values",
        "abandoned carts",
        "product catalogs",
        "shipping options",
        "payment methods",
    ),
    "security": (
        "access controls",
        "encryption keys",
        "threat detection",
        "vulnerability scans",
        "zero trust networks",
        "incident responses",
        "phishing attacks",
        "compliance audits",
    ),
    "data engineering": (
        "data pipelines",
        "stream processing",
        "data warehouses",
        "schema changes",
        "batch jobs",
        "data quality checks",
        "workflow orchestration",
        "change data capture",
    ),
    "ai": (
        "machine learning models",
        "text embeddings",
        "model training",
        "feature engineering",
        "language models",
        "model evaluations",
        "inference latency",
        "training data",
    ),
    "finance": (
        "budget forecasts",
        "cash flow",
        "risk models",
        "payment processing",
        "fraud detection",
        "financial reports",
        "revenue recognition",
        "cost controls",
    ),
    "healthcare": (
        "patient engagement",
        "clinical workflows",
        "telehealth visits",
        "health records",
        "care coordination",
        "medical billing",
        "appointment scheduling",
        "wellness programs",
    ),
    "retail": (
        "store operations",
        "inventory planning",
        "loyalty programs",
        "omnichannel journeys",
        "point of sale systems",
        "seasonal demand",
        "pricing strategies",
        "supply chains",
    ),
    "customer experience": (
        "support tickets",
        "customer journeys",
        "satisfaction surveys",
        "onboarding flows",
        "help centers",
        "live chat",
        "customer feedback",
        "service levels",
    ),
    "cloud": (
        "cloud costs",
        "container platforms",
        "autoscaling policies",
        "serverless functions",
        "multi-region deployments",
        "infrastructure as code",
        "managed databases",
        "uptime targets",
    ),
}
TOPIC_NAMES: tuple[str, ...] = tuple(TOPICS)
RISKY_TOPICS = frozenset({"security", "finance", "healthcare"})
PRODUCTS: dict[str, str] = {
    "marketing": "Aura Campaigns",
    "analytics": "Aura Insights",
    "personalization": "Aura Segments",
    "ecommerce": "Aura Checkout",
    "security": "Aura Shield",
    "data engineering": "Aura Pipelines",
    "ai": "Aura Models",
    "finance": "Aura Ledger",
    "healthcare": "Aura Care",
    "retail": "Aura Store",
    "customer experience": "Aura Voice",
    "cloud": "Aura Cloud",
}
INDUSTRIES: tuple[str, ...] = (
    "finance",
    "healthcare",
    "retail",
    "saas",
    "media",
    "manufacturing",
    "education",
    "travel",
)
INDUSTRY_LABELS: dict[str, str] = {
    "finance": "Financial Services",
    "healthcare": "Healthcare",
    "retail": "Retail",
    "saas": "SaaS",
    "media": "Media",
    "manufacturing": "Manufacturing",
    "education": "Education",
    "travel": "Travel",
}
COMPANIES: tuple[str, ...] = (
    "Northwind Outfitters",
    "Bluepeak Health",
    "Ledgerline Bank",
    "Cobalt Retail",
    "Helix Media",
    "Summit Travel",
    "Ironbridge Manufacturing",
    "Brightpath Learning",
    "Orchid Software",
    "Harbor Insurance",
)
EDITIONS: tuple[str, ...] = ("Starter", "Team", "Business", "Enterprise", "Plus", "Pro")

SENTENCES: dict[str, tuple[str, ...]] = {
    "beginner": (
        "Start with {a}.",
        "{a} can help your team.",
        "This is how {a} work.",
        "Keep your first plan small.",
        "Set one clear goal for {a}.",
        "Try it with a small group first.",
        "You can track {a} in a simple list.",
        "Good {a} make {b} easy to see.",
        "Ask your team what they need.",
        "Check your results each week.",
        "Most teams see a quick win.",
        "Do not try to fix it all at once.",
    ),
    "intermediate": (
        "Once the basics are in place, connect {a} with {b} to see which changes improve results.",
        "Teams in {ind} often review {a} every month and adjust their plans based on what they learn.",
        "A practical approach is to compare {a} before and after each change, then keep what works.",
        "Document how {a} and {b} relate, so that new team members can follow the process.",
        "Start by measuring {a}, and then set targets that the whole team can understand.",
        "Common problems include unclear ownership of {a} and slow feedback from {b}.",
        "When {b} change, revisit {a} to make sure the assumptions still hold.",
        "The best results come from small experiments that run long enough to be reliable.",
    ),
    "advanced": (
        "Sophisticated organizations operationalize {a} alongside {b}, systematically evaluating incremental "
        "performance across heterogeneous customer populations.",
        "Architecturally, {a} necessitates rigorous governance, comprehensive observability, and continuous "
        "validation of {b} against statistically representative baselines.",
        "In regulated {ind} environments, interdependencies between {a} and {b} introduce considerable operational "
        "complexity and measurable organizational exposure.",
        "Quantitatively, the marginal contribution of {a} should be estimated with counterfactual methodologies "
        "rather than retrospective correlational analyses.",
        "Enterprise implementations typically federate {a} across business units, prioritizing interoperability, "
        "reproducibility, and auditability.",
        "Consequently, optimization of {b} becomes a multidimensional problem involving latency, reliability, and "
        "regulatory considerations.",
    ),
}
POSITIVE_SENTENCES: tuple[str, ...] = (
    "The results were excellent, and the team was delighted with the improvement.",
    "This makes {a} simple, reliable and effective.",
    "Customers love how easy it is to get started, and the benefits show up quickly.",
    "It is a great way to grow revenue and build trust.",
)
NEGATIVE_SENTENCES: tuple[str, ...] = (
    "Poorly managed {a} can lead to costly failures and serious risk.",
    "Many teams struggle with slow, broken or confusing {b}.",
    "A single mistake here can cause a breach, a fine, or a painful loss of customers.",
    "Ignoring the problem only makes it worse and more expensive to fix.",
)
PROMO_SENTENCES: tuple[str, ...] = (
    "Save {n}% on {product} this month.",
    "This exclusive offer is the best price we have ever had.",
    "Join thousands of happy customers and enjoy free onboarding.",
    "Upgrade today and get a free bonus workshop for your team.",
)
TITLES: dict[str, tuple[str, ...]] = {
    "article": (
        "Why {A} Matter for {Ind} Teams",
        "{N} Trends in {Topic} to Watch",
        "What Nobody Tells You About {A}",
        "The Hidden Cost of Ignoring {A}",
        "{A} vs. {B}: What Actually Works",
        "Rethinking {A} for {Ind}",
    ),
    "guide": (
        "How to Set Up {A} Step by Step",
        "The Complete Guide to {A}",
        "{N} Ways to Improve {A}",
        "A Practical Playbook for {A} and {B}",
    ),
    "case_study": (
        "How {Company} Improved {A} by {N}%",
        "{Company}: Scaling {A} Across {Ind}",
        "Inside {Company}'s {Topic} Transformation",
    ),
    "product": ("{Product} {Edition}", "{Product} {Edition} for {Ind}"),
    "category": ("{Topic} Software", "{Topic} Tools for {Ind}", "Shop {Topic} Solutions"),
    "promotion": (
        "Save {N}% on {Product} {Edition}",
        "Free {M}-Day Trial of {Product}",
        "Limited Offer: {Product} Bundle",
    ),
}
PERSONA_GUIDE_TITLES: dict[str, str] = {
    "beginner": "A Beginner's Guide to {A}",
    "advanced": "Mastering {A}: An Advanced Playbook",
}
SUMMARIES: dict[str, str] = {
    "article": "An overview of {a} and {b} for {persona} readers in {ind}.",
    "guide": "Learn how to set up {a} step by step, with practical tips on {b}.",
    "case_study": "How {company} used {product} to improve {a} by {n}% in {m} months.",
    "product": "{product} brings {a} and {b} together in one platform for {ind} teams.",
    "category": "Browse tools for {a}, {b} and more.",
    "promotion": "Save {n}% on {product} this month. A limited time offer for new customers.",
}
URL_PREFIX: dict[str, str] = {
    "article": "/articles",
    "guide": "/guides",
    "case_study": "/case-studies",
    "product": "/products",
    "category": "/categories",
    "promotion": "/promotions",
}
TYPE_SHARE = np.array([0.30, 0.20, 0.12, 0.18, 0.08, 0.12])
PARAGRAPHS: dict[str, tuple[int, int]] = {
    "article": (4, 8),
    "guide": (5, 10),
    "case_study": (4, 7),
    "product": (2, 4),
    "category": (1, 2),
    "promotion": (1, 2),
}

COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN", "CA", "NL", "ES", "BR", "AU", "JP", "IT", "SE", "IE", "PL")
COUNTRY_SHARE = np.array([0.32, 0.10, 0.08, 0.06, 0.10, 0.05, 0.04, 0.04, 0.04, 0.04, 0.03, 0.04, 0.02, 0.02, 0.02])
REFERRERS: dict[str, tuple[str, ...]] = {
    "search": ("https://www.google.com/", "https://www.bing.com/", "https://duckduckgo.com/"),
    "social": (
        "https://www.linkedin.com/feed/",
        "https://t.co/",
        "https://www.facebook.com/",
        "https://www.reddit.com/",
    ),
    "email": ("https://mail.google.com/mail/u/0/", "https://outlook.live.com/mail/0/"),
    "direct": ("",),
    "other": ("https://news.ycombinator.com/", "https://medium.com/", "https://www.g2.com/categories/personalization"),
}
REFERRER_CLASSES: tuple[str, ...] = tuple(REFERRERS)
# Rows are INTENTS; columns follow the tuple named in each comment.
INTENT_SHARE = np.array([0.35, 0.20, 0.20, 0.25])
DEVICE_BY_INTENT = np.array([[0.35, 0.55, 0.10], [0.45, 0.45, 0.10], [0.55, 0.35, 0.10], [0.65, 0.20, 0.15]])  # DEVICES
REFERRER_BY_INTENT = np.array(  # REFERRER_CLASSES
    [
        [0.55, 0.15, 0.05, 0.15, 0.10],
        [0.40, 0.10, 0.05, 0.15, 0.30],
        [0.25, 0.05, 0.30, 0.35, 0.05],
        [0.20, 0.40, 0.10, 0.20, 0.10],
    ]
)
CAMPAIGN_BY_INTENT = np.array(  # no campaign, then CAMPAIGNS
    [
        [0.70, 0.00, 0.15, 0.05, 0.10],
        [0.70, 0.05, 0.05, 0.15, 0.05],
        [0.55, 0.30, 0.00, 0.10, 0.05],
        [0.70, 0.10, 0.00, 0.05, 0.15],
    ]
)
PAGE_BY_INTENT = np.array(  # PAGE_TYPES
    [
        [0.15, 0.45, 0.25, 0.10, 0.02, 0.02, 0.01],
        [0.15, 0.10, 0.05, 0.10, 0.25, 0.20, 0.15],
        [0.25, 0.03, 0.02, 0.05, 0.15, 0.30, 0.20],
        [0.45, 0.15, 0.15, 0.05, 0.15, 0.04, 0.01],
    ]
)
HOUR_BY_INTENT = np.array([10.0, 14.0, 19.0, 21.0])
PAGES_PER_SESSION = np.array([2.5, 3.0, 2.0, 3.0])
EXPERTISE_SHARE = np.array([0.4, 0.4, 0.2])
EXTRA_SESSIONS_MEAN = 1.4
SESSION_DEVICE_STICKINESS = 0.85
SECONDS_PER_PAGE = 45.0


_STRINGS = pl.List(pl.String)
_TS = pl.Datetime("ms", "UTC")
_CONTENT_SCHEMA = {
    "id": pl.String,
    "title": pl.String,
    "url": pl.String,
    "summary": pl.String,
    "body": pl.String,
    "content_type": pl.String,
    "topics": _STRINGS,
    "personas": _STRINGS,
    "industries": _STRINGS,
    "published_at": _TS,
    "updated_at": _TS,
    "jurisdictions": _STRINGS,
    "policy_flags": _STRINGS,
    "device_suitability": _STRINGS,
    "latent_appeal": pl.Float64,
}


@dataclass(frozen=True)
class _ContentCode:
    """The content columns the click model reads, as index arrays and multi-hot matrices."""

    kind: np.ndarray
    topics: np.ndarray
    personas: np.ndarray
    devices: np.ndarray
    appeal: np.ndarray


@dataclass(frozen=True)
class _VisitorCode:
    """The visitor columns the click model reads."""

    intent: np.ndarray
    interests: np.ndarray
    expertise: np.ndarray
    device: np.ndarray


@dataclass(frozen=True, eq=False)
class SyntheticSite(SiteTables):
    """A generated site: the tables the batch reads plus the ground truth behind them.

    `content.latent_appeal` and the visitors' `latent_intent`, `expertise` and `interests` are ground
    truth for the click model; the batch must not read them.
    """

    seed: int = 0
    now: datetime = SITE_EPOCH
    _content_code: _ContentCode = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_content_code", _encode_content(self.content.to_dicts()))

    def click_probability(self, visitor: Mapping[str, Any], content_row: Mapping[str, Any], surface_id: str) -> float:
        """Ground-truth probability that `visitor` (a visitors row; `device` may be overridden per session)
        clicks `content_row` (a content row) shown on `surface_id`."""
        v = _encode_visitors([visitor])
        c = _encode_content([content_row])
        zero = np.zeros(1, dtype=np.int64)
        return float(_probabilities(v, zero, c, zero, v.device, np.array([_base_ctr(surface_id)]))[0])

    def click_probabilities(self, visitor: Mapping[str, Any], surface_id: str) -> np.ndarray:
        """Ground-truth click probability of `visitor` for every row of `content`, in row order."""
        v = _encode_visitors([visitor])
        n = self.content.height
        rows = np.arange(n)
        zeros = np.zeros(n, dtype=np.int64)
        base = np.full(n, _base_ctr(surface_id))
        return _probabilities(v, zeros, self._content_code, rows, np.repeat(v.device, n), base)

    def write(self, out_dir: str | Path) -> Path:
        """Write the tables as Parquet plus `site.json` (seed and clock) into `out_dir`."""
        out = super().write(out_dir)
        meta = {"seed": self.seed, "now": self.now.isoformat(), "generator": "aura.batch.synthetic"}
        (out / SITE_META).write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def read(cls, site_dir: str | Path) -> SyntheticSite:
        """Read a site written by `SyntheticSite.write`, ground truth included."""
        tables = SiteTables.read(site_dir)
        meta = json.loads((Path(site_dir) / SITE_META).read_text())
        return cls(
            content=tables.content,
            events=tables.events,
            visitors=tables.visitors,
            seed=int(meta["seed"]),
            now=datetime.fromisoformat(meta["now"]),
        )


def generate_site(
    seed: int,
    n_content: int = 400,
    n_visitors: int = 3000,
    days: int = 60,
    *,
    surfaces: Mapping[str, Surface] | None = None,
    now: datetime | None = None,
) -> SyntheticSite:
    """Generate a site; the output is a deterministic function of the arguments.

    `surfaces` defaults to `DEFAULT_SURFACES`; surfaces not in `PLACEMENTS` render on one seeded page
    type. `now` (default `SITE_EPOCH`) is the end of the event window.

    >>> site = generate_site(7, n_content=60, n_visitors=200)
    >>> site.events.columns[:4]
    ['event_id', 'ts', 'anon_id', 'session_id']
    """
    if n_content < len(CONTENT_TYPES) or n_visitors < 1 or days < 1:
        raise ValueError(
            f"generate_site needs n_content >= {len(CONTENT_TYPES)}, n_visitors >= 1 and days >= 1, "
            f"got {n_content}, {n_visitors}, {days}."
        )
    surfaces = dict(surfaces or DEFAULT_SURFACES)
    now = now or SITE_EPOCH
    rng = np.random.default_rng(seed)
    content = _content_table(rng, n_content, now)
    visitors = _visitors_table(rng, n_visitors)
    events = _events_table(rng, content, visitors, surfaces, now, days)
    return SyntheticSite(content=content, events=events, visitors=visitors, seed=seed, now=now)


def generate_surfaces(n: int, seed: int = 0) -> dict[str, Surface]:
    """Seeded bench surfaces `surface_000` ...: one to three eligible content types, 1 to 20 items each."""
    rng = np.random.default_rng(seed)
    surfaces = {}
    for i in range(n):
        picked = rng.choice(len(CONTENT_TYPES), int(rng.integers(1, 4)), replace=False)
        types = tuple(CONTENT_TYPES[t] for t in sorted(picked))
        max_items = int(rng.choice((1, 5, 10, 20)))
        surface_id = f"surface_{i:03d}"
        surfaces[surface_id] = Surface(
            surface_id,
            max_items=max_items,
            diversity=max_items > 1,
            freshness_boost=round(float(rng.uniform(0.2, 1.0)), 2),
            eligible_content_types=types,
            allowed_policy_flags=("age_restricted",) if "promotion" in types else (),
        )
    return surfaces


def _base_ctr(surface_id: str) -> float:
    return SURFACE_BASE_CTR.get(surface_id, DEFAULT_BASE_CTR)


def _multi_hot(values: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> np.ndarray:
    index = {v: i for i, v in enumerate(vocabulary)}
    out = np.zeros((len(values), len(vocabulary)), dtype=bool)
    for row, items in enumerate(values):
        for item in items or ():
            if item in index:
                out[row, index[item]] = True
    return out


def _encode_content(rows: Sequence[Mapping[str, Any]]) -> _ContentCode:
    return _ContentCode(
        kind=np.array([CONTENT_TYPES.index(r["content_type"]) for r in rows], dtype=np.int64),
        topics=_multi_hot([r["topics"] for r in rows], TOPIC_NAMES),
        personas=_multi_hot([r["personas"] for r in rows], PERSONAS),
        devices=_multi_hot([r["device_suitability"] for r in rows], DEVICES),
        appeal=np.array([r["latent_appeal"] for r in rows], dtype=np.float64),
    )


def _encode_visitors(rows: Sequence[Mapping[str, Any]]) -> _VisitorCode:
    return _VisitorCode(
        intent=np.array([INTENTS.index(r["latent_intent"]) for r in rows], dtype=np.int64),
        interests=_multi_hot([r["interests"] for r in rows], TOPIC_NAMES),
        expertise=np.array([PERSONAS.index(r["expertise"]) for r in rows], dtype=np.int64),
        device=np.array([DEVICES.index(r["device"]) for r in rows], dtype=np.int64),
    )


def _probabilities(
    v: _VisitorCode, v_rows: np.ndarray, c: _ContentCode, c_rows: np.ndarray, devices: np.ndarray, base: np.ndarray
) -> np.ndarray:
    """The click model, element-wise over (visitor row, content row, device, surface base rate) pairs."""
    intent, kind = v.intent[v_rows], c.kind[c_rows]
    topic_match = np.any(v.interests[v_rows] & c.topics[c_rows], axis=1)
    persona_match = c.personas[c_rows, v.expertise[v_rows]]
    suited = c.devices[c_rows, devices]
    p = (
        base
        * c.appeal[c_rows]
        * INTENT_TYPE_LIFT[intent, kind]
        * DEVICE_TYPE_LIFT[devices, kind]
        * np.where(topic_match, TOPIC_MATCH_LIFT, TOPIC_MISS_LIFT)
        * np.where(persona_match, PERSONA_MATCH_LIFT, PERSONA_MISS_LIFT)
        * np.where(suited, 1.0, UNSUITED_DEVICE_LIFT)
    )
    return np.minimum(p, MAX_CLICK_PROBABILITY)


def _cap(phrase: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in phrase.split(" "))


def _slug(title: str) -> str:
    kept = "".join(ch if ch.isalnum() else "-" for ch in title.lower())
    return "-".join(part for part in kept.split("-") if part)


def _content_table(rng: np.random.Generator, n: int, now: datetime) -> pl.DataFrame:
    text_rng = random.Random(int(rng.integers(2**63)))
    kinds = np.concatenate([np.arange(len(CONTENT_TYPES)), rng.choice(len(CONTENT_TYPES), n - 6, p=TYPE_SHARE)])
    ages = np.minimum(rng.exponential(150.0, n), 730.0)
    appeal = rng.lognormal(0.0, 0.35, n)
    rows: list[dict[str, Any]] = []
    slugs: set[str] = set()
    for i in range(n):
        kind = CONTENT_TYPES[kinds[i]]
        topics = text_rng.sample(TOPIC_NAMES, 2 if text_rng.random() < 0.4 else 1)
        personas = _personas(text_rng, kind)
        industries = text_rng.sample(INDUSTRIES, text_rng.choice((0, 1, 1, 2)) if kind != "case_study" else 1)
        published = now - timedelta(days=float(ages[i]), hours=text_rng.randint(0, 23))
        updated = published + timedelta(days=text_rng.uniform(0, ages[i])) if text_rng.random() < 0.3 else published
        fill = _fill(text_rng, topics, industries, personas[0])
        title = text_rng.choice(_title_templates(kind, personas[0])).format(**fill)
        slug = _slug(title)
        while slug in slugs:
            slug = f"{_slug(title)}-{len(slugs)}"
        slugs.add(slug)
        rows.append(
            {
                "id": f"c{i + 1:04d}",
                "title": title,
                "url": f"{URL_PREFIX[kind]}/{slug}",
                "summary": SUMMARIES[kind].format(**fill),
                "body": _body(text_rng, kind, topics, personas[0], fill),
                "content_type": kind,
                "topics": topics,
                "personas": personas,
                "industries": industries,
                "published_at": published,
                "updated_at": updated,
                "jurisdictions": _jurisdictions(text_rng),
                "policy_flags": _policy_flags(text_rng, kind, topics),
                "device_suitability": _device_suitability(text_rng, kind),
                "latent_appeal": float(appeal[i]),
            }
        )
    return pl.DataFrame(rows, schema=_CONTENT_SCHEMA)


def _personas(rnd: random.Random, kind: str) -> list[str]:
    weights = {"guide": (5, 3, 2), "case_study": (1, 4, 4), "product": (2, 4, 3)}.get(kind, (3, 4, 3))
    first = rnd.choices(PERSONAS, weights=weights)[0]
    if rnd.random() < 0.3:
        neighbour = PERSONAS[min(PERSONAS.index(first) + 1, 2)] if first != "advanced" else "intermediate"
        return sorted({first, neighbour}, key=PERSONAS.index)
    return [first]


def _fill(rnd: random.Random, topics: list[str], industries: list[str], persona: str) -> dict[str, Any]:
    phrases = [p for t in topics for p in TOPICS[t]]
    a, b = rnd.sample(phrases, 2)
    industry = industries[0] if industries else rnd.choice(INDUSTRIES)
    product = PRODUCTS[topics[0]]
    return {
        "a": a,
        "b": b,
        "A": _cap(a),
        "B": _cap(b),
        "Topic": _cap(topics[0]) if topics[0] != "ai" else "AI",
        "ind": INDUSTRY_LABELS[industry].lower() if industry != "saas" else "SaaS",
        "Ind": INDUSTRY_LABELS[industry],
        "persona": persona,
        "company": (company := rnd.choice(COMPANIES)),
        "Company": company,
        "product": product,
        "Product": product,
        "Edition": rnd.choice(EDITIONS),
        "n": rnd.choice((10, 15, 20, 25, 30, 40)),
        "N": rnd.choice((3, 5, 7, 10, 12, 20, 25, 40)),
        "m": rnd.choice((3, 6, 9, 12)),
        "M": rnd.choice((14, 30, 60)),
    }


def _title_templates(kind: str, persona: str) -> tuple[str, ...]:
    if kind == "guide" and persona in PERSONA_GUIDE_TITLES:
        return (*TITLES[kind], PERSONA_GUIDE_TITLES[persona], PERSONA_GUIDE_TITLES[persona])
    return TITLES[kind]


def _body(rnd: random.Random, kind: str, topics: list[str], persona: str, fill: dict[str, Any]) -> str:
    phrases = [p for t in topics for p in TOPICS[t]]
    low, high = PARAGRAPHS[kind]
    risky = any(t in RISKY_TOPICS for t in topics)
    paragraphs = []
    for _ in range(rnd.randint(low, high)):
        sentences = []
        for _ in range(rnd.randint(3, 6)):
            roll = rnd.random()
            if kind == "promotion" and roll < 0.5:
                template = rnd.choice(PROMO_SENTENCES)
            elif roll < (0.18 if risky else 0.06):
                template = rnd.choice(NEGATIVE_SENTENCES)
            elif roll > (0.9 if kind in ("case_study", "product") else 0.95):
                template = rnd.choice(POSITIVE_SENTENCES)
            else:
                template = rnd.choice(SENTENCES[persona])
            a, b = rnd.sample(phrases, 2)
            sentence = template.format(**{**fill, "a": a, "b": b, "A": _cap(a), "B": _cap(b)})
            sentences.append(sentence[:1].upper() + sentence[1:])
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def _jurisdictions(rnd: random.Random) -> list[str]:
    roll = rnd.random()
    for limit, codes in ((0.07, ["US"]), (0.13, ["EU"]), (0.17, ["UK"]), (0.20, ["IN"]), (0.22, ["US", "UK"])):
        if roll < limit:
            return codes
    return []


def _policy_flags(rnd: random.Random, kind: str, topics: list[str]) -> list[str]:
    flags = []
    if kind == "promotion" and rnd.random() < 0.15:
        flags.append("age_restricted")
    if "finance" in topics and rnd.random() < 0.2:
        flags.append("legal")
    if "healthcare" in topics and rnd.random() < 0.3:
        flags.append("medical")
    return flags


def _device_suitability(rnd: random.Random, kind: str) -> list[str]:
    roll = rnd.random()
    if kind in ("article", "guide", "case_study") and roll < 0.05:
        return ["desktop"]
    if roll < 0.15:
        return ["desktop", "tablet"]
    return list(DEVICES)


def _hash_ids(prefix: str, n: int, salt: int) -> list[str]:
    # An odd multiplier makes i -> (i * m + salt) mod 2^48 a bijection, so the ids are unique.
    values = (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4B) + np.uint64(salt)) & np.uint64((1 << 48) - 1)
    return [f"{prefix}_{int(v):012x}" for v in values]


def _visitors_table(rng: np.random.Generator, n: int) -> pl.DataFrame:
    intent = rng.choice(len(INTENTS), n, p=INTENT_SHARE)
    device = _choose_rows(rng, DEVICE_BY_INTENT[intent])
    referrer_kind = _choose_rows(rng, REFERRER_BY_INTENT[intent])
    campaign = _choose_rows(rng, CAMPAIGN_BY_INTENT[intent])
    expertise = rng.choice(len(PERSONAS), n, p=EXPERTISE_SHARE)
    country = rng.choice(len(COUNTRIES), n, p=COUNTRY_SHARE)
    interests = np.argsort(rng.random((n, len(TOPIC_NAMES))), axis=1)[:, :2]
    hour = np.mod(np.rint(rng.normal(HOUR_BY_INTENT[intent], 2.5)), 24).astype(int)
    sessions = 1 + rng.poisson(EXTRA_SESSIONS_MEAN, n)
    referrer_pick = rng.integers(0, 1 << 30, n)
    return pl.DataFrame(
        {
            "anon_id": _hash_ids("anon", n, int(rng.integers(1 << 40))),
            "latent_intent": [INTENTS[i] for i in intent],
            "expertise": [PERSONAS[i] for i in expertise],
            "interests": [[TOPIC_NAMES[a], TOPIC_NAMES[b]] for a, b in interests],
            "device": [DEVICES[i] for i in device],
            "country": [COUNTRIES[i] for i in country],
            "referrer": [
                _referrer(REFERRER_CLASSES[k], int(p)) for k, p in zip(referrer_kind, referrer_pick, strict=True)
            ],
            "typical_hour": hour,
            "time_of_day": [time_of_day(int(h)) for h in hour],
            "campaign": [CAMPAIGNS[c - 1] if c else None for c in campaign],
            "n_sessions": sessions,
        },
        schema_overrides={"typical_hour": pl.Int32, "n_sessions": pl.Int32},
    )


def _referrer(kind: str, pick: int) -> str:
    options = REFERRERS[kind]
    return options[pick % len(options)]


def _choose_rows(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a (n, k) probability matrix."""
    cumulative = np.cumsum(probabilities, axis=1)
    draws = rng.random((probabilities.shape[0], 1)) * cumulative[:, -1:]
    return np.minimum((draws > cumulative).sum(axis=1), probabilities.shape[1] - 1)


def _placements(rng: np.random.Generator, surfaces: Mapping[str, Surface]) -> dict[str, np.ndarray]:
    """Surface indices rendered on each page type."""
    on_page: dict[str, list[int]] = {p: [] for p in PAGE_TYPES}
    for index, surface_id in enumerate(surfaces):
        pages = PLACEMENTS.get(surface_id) or (PAGE_TYPES[int(rng.integers(len(PAGE_TYPES)))],)
        for page in pages:
            on_page[str(page)].append(index)
    return {p: np.array(v, dtype=np.int64) for p, v in on_page.items()}


def _events_table(
    rng: np.random.Generator,
    content: pl.DataFrame,
    visitors: pl.DataFrame,
    surfaces: Mapping[str, Surface],
    now: datetime,
    days: int,
) -> pl.DataFrame:
    c = _encode_content(content.to_dicts())
    v = _encode_visitors(visitors.to_dicts())
    n_visitors = visitors.height
    intent = v.intent

    # Sessions: the first one uses the visitor's acquisition context, later ones are mostly direct.
    n_sessions = visitors["n_sessions"].to_numpy()
    s_visitor = np.repeat(np.arange(n_visitors), n_sessions)
    n_s = s_visitor.size
    first = np.r_[True, s_visitor[1:] != s_visitor[:-1]]
    first_day = rng.uniform(0, days, n_visitors)[s_visitor]
    later_day = first_day + rng.uniform(0, 1, n_s) * (days - first_day)
    start_day = np.sort(np.where(first, first_day, later_day) + s_visitor * days) - s_visitor * days
    hour = np.mod(visitors["typical_hour"].to_numpy()[s_visitor] + rng.normal(0, 1.5, n_s), 24)
    start = (
        np.datetime64(now.replace(tzinfo=None), "ms")
        - np.timedelta64(days, "D")
        + (np.floor(start_day) * 86400 + hour * 3600).astype("timedelta64[s]")
    )
    other_device = (v.device[s_visitor] + rng.integers(1, len(DEVICES), n_s)) % len(DEVICES)
    s_device = np.where(rng.random(n_s) < SESSION_DEVICE_STICKINESS, v.device[s_visitor], other_device)
    visitor_referrer = visitors["referrer"].to_numpy()
    later_referrer = np.where(rng.random(n_s) < 0.5, "", visitor_referrer[s_visitor])
    s_referrer = np.where(first, visitor_referrer[s_visitor], later_referrer)
    s_campaign = np.where(first, visitors["campaign"].to_numpy()[s_visitor], None)
    session_ids = np.array(_hash_ids("sess", n_s, int(rng.integers(1 << 40))))

    # Page views.
    n_pages = 1 + rng.poisson(PAGES_PER_SESSION[intent[s_visitor]])
    p_session = np.repeat(np.arange(n_s), n_pages)
    p_offset = np.cumsum(rng.exponential(SECONDS_PER_PAGE, p_session.size))
    session_first_page = np.r_[0, np.cumsum(n_pages)[:-1]]
    p_offset -= p_offset[session_first_page][p_session]
    p_ts = start[p_session] + (p_offset * 1000).astype("timedelta64[ms]")
    p_page = _choose_rows(rng, PAGE_BY_INTENT[intent[s_visitor[p_session]]])

    # Renders: every surface placed on the page type shows a few items.
    surface_list = list(surfaces.values())
    placements = _placements(rng, surfaces)
    r_pv, r_surface = [], []
    for k, page in enumerate(PAGE_TYPES):
        views = np.flatnonzero(p_page == k)
        for s in placements[page]:
            r_pv.append(views)
            r_surface.append(np.full(views.size, s))
    pv, surf = _concat(r_pv), _concat(r_surface)
    order = np.lexsort((surf, pv))
    pv, surf = pv[order], surf[order]

    r_session = p_session[pv]
    r_visitor = s_visitor[r_session]
    r_device = s_device[r_session]
    country_codes = visitors["country"].to_numpy()
    allowed = _jurisdiction_allowed(content, COUNTRIES)
    country_index = {code: i for i, code in enumerate(COUNTRIES)}
    r_country = np.array([country_index[code] for code in country_codes])[r_visitor]
    age_days = (np.datetime64(now.replace(tzinfo=None), "ms") - content["published_at"].to_numpy()) / np.timedelta64(
        1, "D"
    )
    log_weight = np.log(0.5 + np.exp(-age_days.astype(np.float64) / 90.0))

    i_render, i_item = _impressions(rng, c, surface_list, surf, r_device, allowed[r_country], log_weight)
    i_visitor = r_visitor[i_render]
    i_device = r_device[i_render]
    base = np.array([_base_ctr(sid) for sid in surfaces])[surf[i_render]]
    p = _probabilities(v, i_visitor, c, i_item, i_device, base)
    clicked = rng.random(p.size) < p
    i_ts = p_ts[pv[i_render]]
    click_ts = i_ts[clicked] + (rng.uniform(2, 30, int(clicked.sum())) * 1000).astype("timedelta64[ms]")

    rows_of = np.concatenate([np.arange(i_render.size), np.flatnonzero(clicked)])
    ts = np.concatenate([i_ts, click_ts])
    kind = np.concatenate([np.zeros(i_render.size, dtype=np.int8), np.ones(int(clicked.sum()), dtype=np.int8)])
    order = np.lexsort((kind, rows_of, ts))
    rows_of, ts, kind = rows_of[order], ts[order], kind[order]
    render = i_render[rows_of]
    session = r_session[render]
    surface_ids = np.array(list(surfaces), dtype=object)
    hours = ((ts - ts.astype("datetime64[D]")) // np.timedelta64(1, "h")).astype(int)
    tod = np.array([time_of_day(h) for h in range(24)], dtype=object)[hours]
    return pl.DataFrame(
        {
            "event_id": [f"evt_{i:08d}" for i in range(ts.size)],
            "ts": ts,
            "anon_id": visitors["anon_id"].to_numpy()[s_visitor[session]],
            "session_id": session_ids[session],
            "surface_id": surface_ids[surf[render]],
            "content_id": content["id"].to_numpy()[i_item[rows_of]],
            "type": np.where(kind == 1, "click", "impression"),
            "device": np.array(DEVICES, dtype=object)[r_device[render]],
            "referrer": s_referrer[session],
            "page_type": np.array(PAGE_TYPES, dtype=object)[p_page[pv[render]]],
            "country": country_codes[s_visitor[session]],
            "time_of_day": tod,
            "campaign": s_campaign[session].tolist(),
        },
        schema_overrides={"ts": _TS, "campaign": pl.String},
    )


def _impressions(
    rng: np.random.Generator,
    c: _ContentCode,
    surfaces: Sequence[Surface],
    render_surface: np.ndarray,
    render_device: np.ndarray,
    render_allowed: np.ndarray,
    log_weight: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The logging policy: each render shows up to `SHOWN_PER_RENDER` eligible items, sampled without
    replacement with probability ~ `exp(log_weight)` (Gumbel top-k) among those suited to the device and
    allowed in the visitor's country. Returns (render, content row) per impression."""
    renders, items = [], []
    for s, surface in enumerate(surfaces):
        rows = np.flatnonzero(render_surface == s)
        types = surface.eligible_content_types or CONTENT_TYPES
        pool = np.flatnonzero(np.isin(c.kind, [CONTENT_TYPES.index(t) for t in types if t in CONTENT_TYPES]))
        shown = min(surface.max_items, SHOWN_PER_RENDER, pool.size)
        if rows.size == 0 or shown == 0:
            continue
        for chunk in np.array_split(rows, max(1, rows.size // 4096)):
            keys = log_weight[pool] + rng.gumbel(size=(chunk.size, pool.size))
            ok = c.devices[pool][:, render_device[chunk]].T & render_allowed[chunk][:, pool]
            keys = np.where(ok, keys, -np.inf)
            top = np.argpartition(-keys, shown - 1, axis=1)[:, :shown]
            valid = np.isfinite(np.take_along_axis(keys, top, axis=1))
            renders.append(np.repeat(chunk, shown).reshape(chunk.size, shown)[valid])
            items.append(pool[top][valid])
    return _concat(renders), _concat(items)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _jurisdiction_allowed(content: pl.DataFrame, countries: Sequence[str]) -> np.ndarray:
    """(country, content) matrix: True where the item may be shown in the country."""
    codes = content["jurisdictions"].to_list()
    out = np.zeros((len(countries), len(codes)), dtype=bool)
    for i, country in enumerate(countries):
        mine = set(jurisdictions_of(country))
        out[i] = [not item or bool(mine.intersection(item)) for item in codes]
    return out
