"""Request-context normalization shared by the edge (per request) and the batch (per logged event).

Both sides must derive the same cold-start keys from the same raw context, so the functions live here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
TIMES_OF_DAY: tuple[str, ...] = ("morning", "afternoon", "evening", "night")

_SEARCH_HOSTS = ("google.", "bing.", "duckduckgo.", "yahoo.", "baidu.", "yandex.", "ecosia.")
_SOCIAL_HOSTS = ("facebook.", "twitter.", "x.com", "t.co", "linkedin.", "instagram.", "reddit.", "youtube.", "tiktok.")
_EMAIL_HOSTS = ("mail.", "outlook.", "gmail.")

EU_COUNTRIES = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)


def referrer_host(referrer: str) -> str:
    """Return the lower-case host of a referrer URL (no path, no query string), or "" when there is none or
    the URL cannot be parsed (e.g. an unclosed IPv6 bracket)."""
    if not referrer:
        return ""
    try:
        host = urlsplit(referrer if "//" in referrer else f"//{referrer}").hostname or ""
    except ValueError:
        return ""
    return host.lower()


def referrer_class(referrer: str, site_host: str = "") -> str:
    """Classify a referrer URL as direct, search, social, email, internal or other.

    >>> referrer_class("https://www.google.com/search?q=crm")
    'search'
    """
    host = referrer_host(referrer)
    if not host:
        return "direct"
    if site_host and (host == site_host or host.endswith("." + site_host)):
        return "internal"
    for label, tokens in (("email", _EMAIL_HOSTS), ("search", _SEARCH_HOSTS), ("social", _SOCIAL_HOSTS)):
        if any(_names_host(token, host) for token in tokens):
            return label
    return "other"


def _names_host(token: str, host: str) -> bool:
    """True when `token` ("google." or "x.com") names `host` or one of its parent domains."""
    if token.endswith("."):
        return host.startswith(token) or ("." + token) in host
    return host == token or host.endswith("." + token)


def time_of_day(hour: int) -> str:
    """Map an hour 0-23 to morning (5-11), afternoon (12-16), evening (17-21) or night."""
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    if 17 <= hour < 22:
        return "evening"
    return "night"


def jurisdictions_of(country: str) -> tuple[str, ...]:
    """Jurisdiction codes a country belongs to: itself, "EU" for member states, "UK" for GB (content's usage)."""
    country = country.upper()
    if not country:
        return ()
    if country in EU_COUNTRIES:
        return (country, "EU")
    if country == "GB":
        return (country, "UK")
    return (country,)
