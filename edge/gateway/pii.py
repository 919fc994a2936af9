"""PII scrubbing of SDK events before they reach the durable log.

E-mail addresses, phone numbers and IP addresses in free text are replaced by a placeholder; URLs
lose their query string, fragment and credentials, since those are where tracking tokens and
identifiers live.

>>> scrub_text("mail jane.doe@example.com or call +1 415 555 0100 from 10.0.0.7")
'mail [email] or call [phone] from [ip]'
>>> scrub_url("https://shop.example.com/cart?email=jane@example.com#top")
'https://shop.example.com/cart'
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

_HEX = "[0-9A-Fa-f]{1,4}"
_PATTERN = re.compile(
    r"(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    rf"|(?P<ip>(?<![\w.:])(?:(?:\d{{1,3}}\.){{3}}\d{{1,3}}"
    rf"|(?:{_HEX}:){{7}}{_HEX}"
    rf"|(?:{_HEX}(?::{_HEX})*)?::(?:{_HEX}(?::{_HEX})*)?)(?![\w:]|\.\d))"
    r"|(?P<phone>(?<![\w+.])(?:\+\d[\d\s().-]{5,18}\d|\(?\d{2,4}\)?[\s.-]?\d{3,4}[\s.-]?\d{3,4})(?!\w|\.\d))"
)


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
