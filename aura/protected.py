"""Protected attributes: never a feature of a model, never a segment dimension.

Light on imports, so the configuration (edge and batch alike) and the batch's intent model share one list.
"""

from __future__ import annotations

from collections.abc import Sequence

PROTECTED_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "age",
        "gender",
        "sex",
        "race",
        "ethnicity",
        "religion",
        "disability",
        "health",
        "sexual_orientation",
        "pregnancy",
        "marital_status",
        "nationality",
    }
)
"""Attributes no feature may be or derive from (matched against feature names and their parts)."""


def check_features(names: Sequence[str]) -> None:
    """Raise ValueError when a feature name is, or is built from, a protected attribute."""
    for name in names:
        parts = {name.lower(), *name.lower().split(":"), *name.lower().split("_")}
        if parts & PROTECTED_ATTRIBUTES or any(p in name.lower() for p in PROTECTED_ATTRIBUTES if "_" in p):
            raise ValueError(f"feature {name!r} is a protected attribute; protected attributes are never features.")
