"""PII scrubbing of SDK events: what is replaced and, as important, what is left alone."""

from __future__ import annotations

import pytest

from aura.edge.gateway.pii import scrub_text, scrub_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe+news@example.co.uk now", "mail [email] now"),
        ("call +1 415 555 0100", "call [phone]"),
        ("call +44 20 7946 0958.", "call [phone]."),
        ("call (415) 555-0100 today", "call [phone] today"),
        ("call 415.555.0100", "call [phone]"),
        ("from 10.0.0.7 and 192.168.1.20.", "from [ip] and [ip]."),
        ("pi 3.1415926535 or 1234567890.5", "pi 3.1415926535 or 1234567890.5"),
        ("from 2001:db8:85a3:0:0:8a2e:370:7334", "from [ip]"),
        ("from fe80::1 or ::1", "from [ip] or [ip]"),
        # Left alone: dates, times, versions, invalid addresses, ids, prices, scores.
        ("2025-10-09T14:30:00Z", "2025-10-09T14:30:00Z"),
        ("at 12:30:45", "at 12:30:45"),
        ("v1.2.3 and 999.1.1.1", "v1.2.3 and 999.1.1.1"),
        ("item c1234567890", "item c1234567890"),
        ("price 1234567 cents", "price 1234567 cents"),
        ("score 0.123456789", "score 0.123456789"),
        ("std::vector", "std::vector"),
        ("", ""),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://shop.example.com/cart?email=jane@example.com#top", "https://shop.example.com/cart"),
        ("https://user:secret@example.com:8443/a?q=1", "https://example.com:8443/a"),
        ("https://example.com/users/jane@example.com/profile", "https://example.com/users/[email]/profile"),
        ("http://10.1.2.3/admin", "http://[ip]/admin"),
        ("/relative/path?utm_source=mail", "/relative/path"),
        ("https://www.google.com", "https://www.google.com"),
        ("http://[::1", "http://[[ip]"),
        ("", ""),
    ],
)
def test_scrub_url(url: str, expected: str) -> None:
    assert scrub_url(url) == expected
