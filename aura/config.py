"""Typed configuration: `config/policies.yaml`, `config/surfaces.yaml` and environment variables.

Everything is validated once, at start-up. Unknown keys, wrong types and out-of-range values raise
`ConfigError` with a sentence naming the offending key, e.g.
``policies.yaml: decisioning.exploration.global_budget must be a number in [0, 1], got 1.5.``
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from aura.errors import ConfigError
from aura.protected import check_features

MAX_TOPIC_CLUSTER_CAP = 1000
"""The largest `max_per_topic_cluster` (policies.yaml or DIVERSITY_CONSTRAINT)."""
MAX_DAYS = 36500
"""The longest retention or freshness half-life, in days: a hundred years."""


@dataclass(frozen=True)
class ExplorationPolicy:
    """How much of the traffic may be spent on exploration beyond Thompson sampling's own."""

    global_budget: float = 0.08
    per_user_cap: float = 0.15
    throttle_high_traffic: bool = True
    throttle_rps: float = 500.0
    posterior_variance_scale: float = 0.25
    """Thompson draws come from Beta(a / s, b / s): the posterior's mean with about s times its variance
    (s < 1 exploits more, as Chapelle & Li found best for click rates; 1 is the exact posterior)."""

    def _validate(self, where: str) -> None:
        _check_range(where, "global_budget", self.global_budget, 0.0, 1.0)
        _check_range(where, "posterior_variance_scale", self.posterior_variance_scale, 0.01, 10.0)
        _check_range(where, "per_user_cap", self.per_user_cap, 0.0, 1.0)
        _check_range(where, "throttle_rps", self.throttle_rps, 1.0, 1e9)


@dataclass(frozen=True)
class DiversityPolicy:
    """Diversity constraints applied to the top of every ranking."""

    max_per_topic_cluster: int = 1
    min_topic_distance: float = 0.3
    enforce_in_top_n: int = 5

    def _validate(self, where: str) -> None:
        _check_range(where, "max_per_topic_cluster", self.max_per_topic_cluster, 1, MAX_TOPIC_CLUSTER_CAP)
        _check_range(where, "min_topic_distance", self.min_topic_distance, 0.0, 2.0)
        _check_range(where, "enforce_in_top_n", self.enforce_in_top_n, 0, 1000)


@dataclass(frozen=True)
class FreshnessPolicy:
    """Exponential decay of a score with content age; `minimum_score` is the decay's floor."""

    decay_function: Literal["exponential"] = "exponential"
    half_life_days: float = 14.0
    minimum_score: float = 0.3

    def _validate(self, where: str) -> None:
        _check_range(where, "half_life_days", self.half_life_days, 0.01, float(MAX_DAYS))
        _check_range(where, "minimum_score", self.minimum_score, 0.0, 1.0)


@dataclass(frozen=True)
class EligibilityPolicy:
    """Which eligibility rules run; `flag_consents` maps a policy flag to the consent it needs."""

    check_jurisdiction: bool = True
    check_consent: bool = True
    check_policy_flags: bool = True
    check_device: bool = True
    flag_consents: dict[str, str] = field(default_factory=lambda: {"age_restricted": "age_verified"})


@dataclass(frozen=True)
class DecisioningPolicy:
    """The decision policy of the edge server."""

    exploration: ExplorationPolicy = field(default_factory=ExplorationPolicy)
    diversity: DiversityPolicy = field(default_factory=DiversityPolicy)
    freshness: FreshnessPolicy = field(default_factory=FreshnessPolicy)
    eligibility: EligibilityPolicy = field(default_factory=EligibilityPolicy)


@dataclass(frozen=True)
class ColdStartPolicy:
    """How visitors without enough history are segmented."""

    use_rules: bool = True
    use_popularity: bool = True
    min_events: int = 3

    def _validate(self, where: str) -> None:
        _check_range(where, "min_events", self.min_events, 0, 1_000_000)
        if not self.use_popularity:
            raise ConfigError(
                f"{where}.use_popularity must be true: each surface's global (popularity) cell is the fallback of "
                "every decision, which this release cannot switch off."
            )


@dataclass(frozen=True)
class ConfidencePolicy:
    """Assignments below `assignment_threshold` fall back to cold start; below `holdout_below`, holdout."""

    assignment_threshold: float = 0.7
    holdout_below: float = 0.5

    def _validate(self, where: str) -> None:
        _check_range(where, "assignment_threshold", self.assignment_threshold, 0.0, 1.0)
        _check_range(where, "holdout_below", self.holdout_below, 0.0, 1.0)
        if self.holdout_below > self.assignment_threshold:
            raise ConfigError(
                f"{where}.holdout_below ({self.holdout_below}) must not exceed "
                f"{where}.assignment_threshold ({self.assignment_threshold})."
            )


@dataclass(frozen=True)
class FairnessPolicy:
    """Privacy floor of segments and the ban on protected attributes."""

    k_anonymity_threshold: int = 50
    exclude_protected_attributes: bool = True

    def _validate(self, where: str) -> None:
        _check_range(where, "k_anonymity_threshold", self.k_anonymity_threshold, 1, 1_000_000_000)
        if not self.exclude_protected_attributes:
            raise ConfigError(
                f"{where}.exclude_protected_attributes must be true: protected attributes are never segment dimensions."
            )


PROFILE_DIMENSIONS: tuple[str, ...] = ("intent", "device_class", "recency", "price_sensitivity", "topic_interest")
"""Visitor attributes the batch infers from their history; any of them can be a segment dimension."""
CONTEXT_DIMENSIONS: tuple[str, ...] = ("device", "referrer_class", "page_type", "country", "time_of_day", "campaign")
"""Request context keys the event log records; as a dimension, a visitor's most common value is used."""
DEFAULT_DIMENSIONS: tuple[str, ...] = ("intent", "device_class", "recency", "price_sensitivity")
CUSTOM_CONTEXT_PREFIX = "context."
"""A dimension `context.<key>` names the key `<key>` of the Rank request's free-form `context` map."""
_CUSTOM_CONTEXT_KEY = re.compile(r"[a-z0-9_]{1,64}")


def custom_context_key(dimension: str) -> str | None:
    """The request context key a `context.<key>` dimension names; None for any other dimension."""
    return dimension.removeprefix(CUSTOM_CONTEXT_PREFIX) if dimension.startswith(CUSTOM_CONTEXT_PREFIX) else None


def check_dimensions(dimensions: Sequence[str], where: str) -> tuple[str, ...]:
    """The segment dimensions as a tuple, or a ConfigError (prefixed by `where`) naming the first wrong entry.

    A dimension is one of `PROFILE_DIMENSIONS` or `CONTEXT_DIMENSIONS`, or `context.<key>` for a key of
    1-64 characters of a-z, 0-9 and _ that is not one of those names; none may repeat or be (or be built
    from) a protected attribute, and there is at least one.
    """
    dims = tuple(dimensions)
    if not dims:
        raise ConfigError(f"{where} must be distinct and at least one, got [].")
    known = PROFILE_DIMENSIONS + CONTEXT_DIMENSIONS
    seen: set[str] = set()
    for dimension in dims:
        if dimension in seen:
            raise ConfigError(f"{where} must be distinct and at least one; {dimension!r} is listed twice.")
        seen.add(dimension)
        key = custom_context_key(dimension)
        try:
            check_features([dimension if key is None else key])
        except ValueError:
            raise ConfigError(
                f"{where}: {dimension!r} is a protected attribute; "
                "protected attributes are never features or segment dimensions."
            ) from None
        if key is None and dimension not in known:
            raise ConfigError(
                f"{where}: {dimension!r} is not a dimension; use any of {list(known)} "
                f"or {CUSTOM_CONTEXT_PREFIX}<key> for a key of the request's context."
            )
        if key is not None and not _CUSTOM_CONTEXT_KEY.fullmatch(key):
            raise ConfigError(
                f"{where}: {dimension!r} is not a valid context dimension; the key after "
                f"{CUSTOM_CONTEXT_PREFIX!r} must be 1-64 characters of a-z, 0-9 and _."
            )
        if key in known:
            raise ConfigError(f"{where}: {dimension!r} names the built-in dimension {key!r}; write {key!r} instead.")
    return dims


@dataclass(frozen=True)
class SegmentationPolicy:
    """Segmentation settings shared by the batch and the edge; `dimensions` is the segment hierarchy,
    coarsest first (k-anonymity merges a small segment into its parent by opening its last dimension)."""

    cold_start: ColdStartPolicy = field(default_factory=ColdStartPolicy)
    confidence: ConfidencePolicy = field(default_factory=ConfidencePolicy)
    fairness: FairnessPolicy = field(default_factory=FairnessPolicy)
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS

    def _validate(self, where: str) -> None:
        check_dimensions(self.dimensions, f"{where}.dimensions")


@dataclass(frozen=True)
class Policies:
    """The whole of `config/policies.yaml`."""

    policy_version: str = "2025-10-01"
    decisioning: DecisioningPolicy = field(default_factory=DecisioningPolicy)
    segmentation: SegmentationPolicy = field(default_factory=SegmentationPolicy)


@dataclass(frozen=True)
class Surface:
    """One surface of `config/surfaces.yaml`; empty `eligible_content_types` admits every type."""

    id: str
    type: Literal["ranking"] = "ranking"
    max_items: int = 10
    diversity: bool = True
    freshness_boost: float = 1.0
    eligible_content_types: tuple[str, ...] = ()
    allowed_policy_flags: tuple[str, ...] = ()
    cache_ttl: int = 300

    def _validate(self, where: str) -> None:
        _check_range(where, "max_items", self.max_items, 1, 100)
        _check_range(where, "freshness_boost", self.freshness_boost, 0.0, 1.0)
        _check_range(where, "cache_ttl", self.cache_ttl, 0, 86400)


DEV_REQUEST_ID_SECRET = "aura-dev-secret-change-me"
"""The default request id secret: public, so anyone can forge feedback until AURA_REQUEST_ID_SECRET is set."""
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Settings:
    """Process settings from environment variables (names in `ENV_NAMES`)."""

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 4
    api_log_level: Literal["debug", "info", "warning", "error"] = "info"
    grpc_address: str = "127.0.0.1:50051"
    config_dir: str = "config"
    state_dir: str = "var/edge"
    bundle_store: str = "var/bundle-store"
    s3_endpoint_url: str = ""
    bundle_poll_seconds: float = 30.0
    admin_token: str = ""
    request_id_secret: str = DEV_REQUEST_ID_SECRET
    rate_limit_rps: float = 200.0
    rate_limit_burst: int = 400
    max_body_bytes: int = 65536
    event_batch_size: int = 1000
    event_flush_interval: float = 5.0
    bandit_algorithm: Literal["thompson_sampling"] = "thompson_sampling"
    exploration_rate: float | None = None
    diversity_constraint: str | None = None
    freshness_half_life: float | None = None
    segment_confidence_threshold: float | None = None
    segment_refresh_interval: int = 3600
    consent_required: bool = True
    cmp_provider: str = "onetrust"
    pii_scrubbing: Literal["enabled", "disabled"] = "enabled"
    event_retention_days: int = 395
    feature_retention_days: int = 90
    model_retention_versions: int = 5
    cors_origins: tuple[str, ...] = ()

    def _validate(self, where: str) -> None:
        for name, low, high in (
            ("api_port", 1, 65535),
            ("api_workers", 1, 256),
            ("model_retention_versions", 1, 1000),
            ("bundle_poll_seconds", 0.05, 86400.0),
            ("rate_limit_rps", 0.001, 1e9),
            ("rate_limit_burst", 1, 1_000_000_000),
            ("max_body_bytes", 256, 64 * 1024 * 1024),
            ("event_batch_size", 1, 1_000_000),
            ("event_flush_interval", 0.01, 3600.0),
            ("segment_refresh_interval", 1, 86400 * 366),
            ("event_retention_days", 1, MAX_DAYS),
            ("feature_retention_days", 1, MAX_DAYS),
        ):
            _check_range(where, ENV_NAMES[name], getattr(self, name), low, high)
        if self.diversity_constraint is not None:
            _parse_diversity_constraint(self.diversity_constraint)
        try:
            parse_host_port(self.grpc_address)
        except ValueError as exc:
            raise ConfigError(f"{where}: {ENV_NAMES['grpc_address']}: {exc}.") from None
        if _URL_SCHEME.match(self.bundle_store) and not self.bundle_store.startswith("s3://"):
            raise ConfigError(
                f"{where}: {ENV_NAMES['bundle_store']} must be a local directory or s3://bucket/prefix, "
                f"got {self.bundle_store!r}."
            )


ENV_NAMES: dict[str, str] = {
    "api_host": "API_HOST",
    "api_port": "API_PORT",
    "api_workers": "API_WORKERS",
    "api_log_level": "API_LOG_LEVEL",
    "grpc_address": "AURA_GRPC_ADDRESS",
    "config_dir": "AURA_CONFIG_DIR",
    "state_dir": "AURA_STATE_DIR",
    "bundle_store": "AURA_BUNDLE_STORE",
    "s3_endpoint_url": "AURA_S3_ENDPOINT_URL",
    "bundle_poll_seconds": "AURA_BUNDLE_POLL_SECONDS",
    "admin_token": "AURA_ADMIN_TOKEN",
    "request_id_secret": "AURA_REQUEST_ID_SECRET",
    "rate_limit_rps": "AURA_RATE_LIMIT_RPS",
    "rate_limit_burst": "AURA_RATE_LIMIT_BURST",
    "max_body_bytes": "AURA_MAX_BODY_BYTES",
    "event_batch_size": "EVENT_BATCH_SIZE",
    "event_flush_interval": "EVENT_FLUSH_INTERVAL",
    "bandit_algorithm": "BANDIT_ALGORITHM",
    "exploration_rate": "EXPLORATION_RATE",
    "diversity_constraint": "DIVERSITY_CONSTRAINT",
    "freshness_half_life": "FRESHNESS_HALF_LIFE",
    "segment_confidence_threshold": "SEGMENT_CONFIDENCE_THRESHOLD",
    "segment_refresh_interval": "SEGMENT_REFRESH_INTERVAL",
    "consent_required": "CONSENT_REQUIRED",
    "cmp_provider": "CMP_PROVIDER",
    "pii_scrubbing": "PII_SCRUBBING",
    "event_retention_days": "EVENT_RETENTION_DAYS",
    "feature_retention_days": "FEATURE_RETENTION_DAYS",
    "model_retention_versions": "MODEL_RETENTION_VERSIONS",
    "cors_origins": "AURA_CORS_ORIGINS",
}


OTHER_AURA_VARIABLES = frozenset(
    {"AURA_NODE_ID", "AURA_DEMO_SITE_PORT", "AURA_DUCKDB_MEMORY_LIMIT", "AURA_DUCKDB_THREADS"}
)
"""The AURA_* variables read outside `Settings`: the logs' node id, the demo site's port, the batch's DuckDB limits."""


def unknown_aura_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A message per set AURA_* variable that nothing reads, naming the closest known one (else a typo is silent)."""
    environ = os.environ if environ is None else environ
    known = sorted({name for name in ENV_NAMES.values() if name.startswith("AURA_")} | OTHER_AURA_VARIABLES)
    messages = []
    for name in sorted(variable for variable in environ if variable.startswith("AURA_") and variable not in known):
        # Compared without the shared prefix, which would make every pair look alike.
        guess = difflib.get_close_matches(name.removeprefix("AURA_"), [k.removeprefix("AURA_") for k in known], n=1)
        hint = f"; did you mean AURA_{guess[0]}?" if guess else f"; the AURA_* settings are {', '.join(known)}."
        messages.append(f"environment: {name} is not an AURA setting and is ignored{hint}")
    return messages


@dataclass(frozen=True)
class AppConfig:
    """Everything a process needs: settings, policies (env overrides applied) and surfaces."""

    settings: Settings
    policies: Policies
    surfaces: Mapping[str, Surface]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from environment variables; unset variables keep their defaults."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for name, env in ENV_NAMES.items():
        if env in environ and environ[env] != "":
            raw[name] = environ[env]
    return _build(Settings, raw, "environment", env_names=ENV_NAMES)


def load_policies(path: str | Path) -> Policies:
    """Read and validate `policies.yaml`; a missing file means the seed's defaults."""
    data = _read_yaml(path)
    return _build(Policies, data, "policies.yaml")


def load_surfaces(path: str | Path) -> dict[str, Surface]:
    """Read and validate `surfaces.yaml` (a top-level `surfaces:` mapping of id to settings)."""
    if not Path(path).is_file():
        raise ConfigError(f"surfaces.yaml: {path} does not exist; it defines the surfaces the API ranks for.")
    data = _read_yaml(path)
    unknown = set(data) - {"surfaces"}
    if unknown:
        raise ConfigError(f"surfaces.yaml: unknown top-level key {sorted(unknown)[0]!r}; expected 'surfaces'.")
    surfaces = data.get("surfaces") or {}
    if not isinstance(surfaces, dict) or not surfaces:
        raise ConfigError("surfaces.yaml: 'surfaces' must be a non-empty mapping of surface id to settings.")
    result = {}
    for surface_id, body in surfaces.items():
        if not isinstance(body, dict):
            raise ConfigError(f"surfaces.yaml: surfaces.{surface_id} must be a mapping.")
        result[str(surface_id)] = _build(
            Surface, {**body, "id": str(surface_id)}, f"surfaces.yaml: surfaces.{surface_id}"
        )
    return result


def load_config(environ: Mapping[str, str] | None = None) -> AppConfig:
    """Load settings, policies and surfaces, and apply the seed's env overrides to the policies."""
    settings = load_settings(environ)
    config_dir = Path(settings.config_dir)
    if not config_dir.is_dir():
        raise ConfigError(
            f"environment: {ENV_NAMES['config_dir']}: {config_dir} is not a directory "
            "(it holds policies.yaml and surfaces.yaml)."
        )
    policies = apply_env_overrides(load_policies(config_dir / "policies.yaml"), settings)
    surfaces = load_surfaces(config_dir / "surfaces.yaml")
    return AppConfig(settings=settings, policies=policies, surfaces=surfaces)


def apply_env_overrides(policies: Policies, settings: Settings) -> Policies:
    """Apply EXPLORATION_RATE, DIVERSITY_CONSTRAINT, FRESHNESS_HALF_LIFE and SEGMENT_CONFIDENCE_THRESHOLD."""
    decisioning = policies.decisioning
    segmentation = policies.segmentation
    if settings.exploration_rate is not None:
        _check_range("environment", "EXPLORATION_RATE", settings.exploration_rate, 0.0, 1.0)
        decisioning = dataclasses.replace(
            decisioning,
            exploration=dataclasses.replace(decisioning.exploration, global_budget=settings.exploration_rate),
        )
    if settings.diversity_constraint is not None:
        per_topic = _parse_diversity_constraint(settings.diversity_constraint)
        decisioning = dataclasses.replace(
            decisioning,
            diversity=dataclasses.replace(decisioning.diversity, max_per_topic_cluster=per_topic),
        )
    if settings.freshness_half_life is not None:
        _check_range("environment", "FRESHNESS_HALF_LIFE", settings.freshness_half_life, 0.01, float(MAX_DAYS))
        decisioning = dataclasses.replace(
            decisioning,
            freshness=dataclasses.replace(decisioning.freshness, half_life_days=settings.freshness_half_life),
        )
    if settings.segment_confidence_threshold is not None:
        confidence = dataclasses.replace(
            segmentation.confidence, assignment_threshold=settings.segment_confidence_threshold
        )
        if confidence.holdout_below > confidence.assignment_threshold:
            raise ConfigError(
                f"environment: SEGMENT_CONFIDENCE_THRESHOLD ({confidence.assignment_threshold}) must not be below "
                f"policies.yaml's segmentation.confidence.holdout_below ({confidence.holdout_below})."
            )
        confidence._validate("environment: SEGMENT_CONFIDENCE_THRESHOLD")
        segmentation = dataclasses.replace(segmentation, confidence=confidence)
    return dataclasses.replace(policies, decisioning=decisioning, segmentation=segmentation)


def _parse_diversity_constraint(value: str) -> int:
    parts = value.split("_")
    shape_ok = len(parts) == 4 and parts[0] == "max" and parts[2:] == ["per", "topic"] and parts[1].isdigit()
    if shape_ok and 1 <= int(parts[1]) <= MAX_TOPIC_CLUSTER_CAP:
        return int(parts[1])
    raise ConfigError(
        f"environment: DIVERSITY_CONSTRAINT must look like 'max_1_per_topic' with a cap of 1 to "
        f"{MAX_TOPIC_CLUSTER_CAP}, got {value!r}."
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: the top level must be a mapping.")
    return data


def parse_host_port(address: str) -> tuple[str, int]:
    """Host and port of a gRPC `host:port` address (also `[v6]:port`, and grpc's `dns:///` and `ipv4:` forms)."""
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        address = address.removeprefix(scheme)
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port in 1-65535, got {address!r}")
    return host.strip("[]"), int(port)


def _check_range(where: str, key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{where}: {key} must be in [{low}, {high}], got {value}.")


_TRUE = {"true", "1", "yes", "on", "enabled"}
_FALSE = {"false", "0", "no", "off", "disabled"}


def _build(cls: type, data: Mapping[str, Any], where: str, env_names: Mapping[str, str] | None = None) -> Any:
    """Build the frozen dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys are {', '.join(sorted(names))}.")
    values = {}
    for key, raw in data.items():
        if env_names:
            label = f"{where}: {env_names[key]}"
        else:
            label = f"{where}.{key}" if ": " in where else f"{where}: {key}"
        values[key] = _coerce(hints[key], raw, label, from_env=env_names is not None)
    try:
        instance = cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}.") from None
    validate = getattr(instance, "_validate", None)
    if validate is not None:
        validate(where)
    return instance


def _coerce(hint: Any, raw: Any, label: str, from_env: bool) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], raw, label, from_env)
    if dataclasses.is_dataclass(hint):
        return _build(hint, raw if raw is not None else {}, label)
    if origin is Literal:
        if raw not in args:
            raise ConfigError(f"{label} must be one of {', '.join(map(repr, args))}, got {raw!r}.")
        return raw
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"{label} must be true or false, got {raw!r}.")
    if hint is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{label} must be a whole number, got {raw!r}.")
        if isinstance(raw, int) or (from_env and isinstance(raw, str) and raw.strip().lstrip("-").isdigit()):
            return int(raw)
        raise ConfigError(f"{label} must be a whole number, got {raw!r}.")
    if hint is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{label} must be a number, got {raw!r}.")
        if isinstance(raw, int | float):
            return float(raw)
        if from_env and isinstance(raw, str):
            with contextlib.suppress(ValueError):  # not a number: the ConfigError below says so
                return float(raw)
        raise ConfigError(f"{label} must be a number, got {raw!r}.")
    if hint is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(f"{label} must be a string, got {raw!r}.")
    if origin is tuple:
        if from_env and isinstance(raw, str):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, list | tuple) or not all(isinstance(v, str) for v in raw):
            raise ConfigError(f"{label} must be a list of strings, got {raw!r}.")
        return tuple(raw)
    if origin is dict:
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise ConfigError(f"{label} must be a mapping of strings to strings, got {raw!r}.")
        return dict(raw)
    raise ConfigError(f"{label}: unsupported setting type {hint!r}.")
