import re
from pathlib import Path

import pytest

from aura.config import (
    ENV_NAMES,
    OTHER_AURA_VARIABLES,
    check_dimensions,
    custom_context_key,
    load_config,
    load_policies,
    load_settings,
    load_surfaces,
    parse_host_port,
    unknown_aura_variables,
)
from aura.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_repo_config_loads_with_the_seed_defaults() -> None:
    config = load_config({"AURA_CONFIG_DIR": str(REPO / "config")})
    decisioning = config.policies.decisioning
    assert decisioning.exploration.global_budget == 0.08
    assert decisioning.exploration.per_user_cap == 0.15
    assert decisioning.diversity.max_per_topic_cluster == 1
    assert decisioning.freshness.half_life_days == 14
    assert config.policies.segmentation.confidence.assignment_threshold == 0.7
    assert config.policies.segmentation.fairness.k_anonymity_threshold == 50
    assert config.policies.segmentation.dimensions == ("intent", "device_class", "recency", "price_sensitivity")
    assert config.settings.api_port == 8000
    assert config.settings.consent_required is True
    assert set(config.surfaces) == {"homepage.hero", "blog.index", "product_listing", "promo.banner"}


def test_seed_env_vars_override_the_policies() -> None:
    config = load_config(
        {
            "AURA_CONFIG_DIR": str(REPO / "config"),
            "EXPLORATION_RATE": "0.05",
            "DIVERSITY_CONSTRAINT": "max_2_per_topic",
            "FRESHNESS_HALF_LIFE": "7",
            "SEGMENT_CONFIDENCE_THRESHOLD": "0.6",
            "CONSENT_REQUIRED": "false",
        }
    )
    decisioning = config.policies.decisioning
    assert decisioning.exploration.global_budget == 0.05
    assert decisioning.diversity.max_per_topic_cluster == 2
    assert decisioning.freshness.half_life_days == 7
    assert config.policies.segmentation.confidence.assignment_threshold == 0.6
    assert config.settings.consent_required is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"API_PORT": "eighty"}, "API_PORT must be a whole number"),
        ({"API_PORT": "70000"}, r"environment: API_PORT must be in \[1, 65535\], got 70000"),
        ({"API_PORT": "0"}, r"API_PORT must be in \[1, 65535\]"),
        ({"EXPLORATION_RATE": "1.5"}, r"EXPLORATION_RATE must be in \[0.0, 1.0\]"),
        ({"DIVERSITY_CONSTRAINT": "one_per_topic"}, "DIVERSITY_CONSTRAINT must look like 'max_1_per_topic'"),
        ({"DIVERSITY_CONSTRAINT": "max_5000_per_topic"}, "with a cap of 1 to 1000, got 'max_5000_per_topic'"),
        ({"BANDIT_ALGORITHM": "epsilon_greedy"}, "BANDIT_ALGORITHM must be one of 'thompson_sampling'"),
        ({"CONSENT_REQUIRED": "maybe"}, "CONSENT_REQUIRED must be true or false"),
        ({"API_LOG_LEVEL": "loud"}, "API_LOG_LEVEL must be one of"),
        (
            {"SEGMENT_CONFIDENCE_THRESHOLD": "0.2"},
            r"SEGMENT_CONFIDENCE_THRESHOLD \(0.2\) must not be below policies.yaml's "
            r"segmentation.confidence.holdout_below \(0.5\)",
        ),
        ({"AURA_GRPC_ADDRESS": "localhost"}, "AURA_GRPC_ADDRESS: expected host:port"),
        ({"AURA_GRPC_ADDRESS": "127.0.0.1:0"}, "AURA_GRPC_ADDRESS: expected host:port with a port in 1-65535"),
        ({"AURA_RATE_LIMIT_BURST": "0"}, r"AURA_RATE_LIMIT_BURST must be in \[1, 1000000000\], got 0"),
        ({"EVENT_RETENTION_DAYS": "-5"}, r"EVENT_RETENTION_DAYS must be in \[1, 36500\]"),
        ({"FEATURE_RETENTION_DAYS": "0"}, r"FEATURE_RETENTION_DAYS must be in \[1, 36500\]"),
        ({"SEGMENT_REFRESH_INTERVAL": "-1"}, "SEGMENT_REFRESH_INTERVAL must be in"),
        ({"AURA_BUNDLE_STORE": "gs://bucket/x"}, "AURA_BUNDLE_STORE must be a local directory or s3://bucket/prefix"),
        ({"AURA_BUNDLE_STORE": "S3://bucket/x"}, "AURA_BUNDLE_STORE must be a local directory or s3://bucket/prefix"),
        ({"AURA_CONFIG_DIR": "/nonexistent"}, "AURA_CONFIG_DIR: /nonexistent is not a directory"),
    ],
)
def test_bad_environment_is_rejected_with_the_variable_named(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"AURA_CONFIG_DIR": str(REPO / "config"), **env})


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("decisioning:\n  exploration:\n    global_budget: 1.5\n", r"global_budget must be in \[0.0, 1.0\]"),
        (
            "decisioning:\n  exploration:\n    posterior_variance_scale: 0\n",
            r"posterior_variance_scale must be in \[0.01, 10.0\]",
        ),
        ("decisioning:\n  exploraton: {}\n", "unknown key 'exploraton'"),
        ("decisioning:\n  freshness:\n    decay_function: linear\n", "decay_function must be one of 'exponential'"),
        ("decisioning:\n  diversity:\n    max_per_topic_cluster: two\n", "max_per_topic_cluster must be a whole"),
        ("segmentation:\n  fairness:\n    exclude_protected_attributes: 3\n", "must be true or false"),
        (
            "segmentation:\n  fairness:\n    exclude_protected_attributes: false\n",
            "segmentation.fairness.exclude_protected_attributes must be true",
        ),
        ("segmentation:\n  cold_start:\n    use_popularity: false\n", "segmentation.cold_start.use_popularity must be"),
        ("decisioning:\n  eligibility:\n    flag_consents: [a]\n", "flag_consents must be a mapping"),
        ("segmentation:\n  dimensions: [intent, colour]\n", "segmentation.dimensions: 'colour' is not a dimension"),
        (
            "segmentation:\n  dimensions: [intent, gender]\n",
            "segmentation.dimensions: 'gender' is a protected attribute",
        ),
        ("segmentation:\n  dimensions: [intent, intent]\n", "segmentation.dimensions must be distinct"),
        ("segmentation:\n  dimensions: []\n", "segmentation.dimensions must be distinct and at least one"),
        ("[1, 2]\n", "top level must be a mapping"),
        (
            "decisioning:\n  freshness:\n    half_life_days: 7\n    half_life_days: 14\n",
            "not valid YAML: the key 'half_life_days' appears twice in one mapping",
        ),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_policies_are_rejected_with_the_key_named(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_policies(path)


def test_a_context_key_of_the_request_can_be_a_segment_dimension(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("segmentation:\n  dimensions: [context.plan, intent, device_class, context.industry_2]\n")
    dimensions = load_policies(path).segmentation.dimensions
    assert dimensions == ("context.plan", "intent", "device_class", "context.industry_2")
    assert [custom_context_key(d) for d in dimensions] == ["plan", None, None, "industry_2"]


@pytest.mark.parametrize(
    ("dimension", "message"),
    [
        ("context.Plan", "'context.Plan' is not a valid context dimension; the key after 'context.' must be 1-64"),
        ("context.", "'context.' is not a valid context dimension"),
        ("context.plan-tier", "'context.plan-tier' is not a valid context dimension"),
        ("context.a.b", "'context.a.b' is not a valid context dimension"),
        (f"context.{'k' * 65}", "is not a valid context dimension"),
        ("context.campaign", "'context.campaign' names the built-in dimension 'campaign'; write 'campaign' instead"),
        ("context.gender", "'context.gender' is a protected attribute"),
        ("context.visitor_age", "'context.visitor_age' is a protected attribute"),
        ("context.plan, context.plan", "must be distinct and at least one; 'context.plan' is listed twice"),
        ("ctx.plan", "'ctx.plan' is not a dimension; use any of .* or context.<key>"),
    ],
)
def test_bad_context_dimensions_are_named(tmp_path: Path, dimension: str, message: str) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(f"segmentation:\n  dimensions: [intent, {dimension}]\n")
    with pytest.raises(ConfigError, match=f"policies.yaml: segmentation.dimensions.*{message}"):
        load_policies(path)


def test_build_and_config_share_the_dimension_rules() -> None:
    assert check_dimensions(["context.plan", "intent"], "segment dimensions") == ("context.plan", "intent")
    with pytest.raises(ConfigError, match=r"^segment dimensions: 'context\.Plan' is not a valid context dimension"):
        check_dimensions(["context.Plan"], "segment dimensions")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("surfaces: {}\n", "non-empty mapping"),
        ("surface: {}\n", "unknown top-level key 'surface'"),
        ("surfaces:\n  hero:\n    max_items: 0\n", r"surfaces.hero: max_items must be in \[1, 100\]"),
        ("surfaces:\n  hero:\n    colour: red\n", "unknown key 'colour'"),
        ("surfaces:\n  hero:\n    eligible_content_types: article\n", "must be a list of strings"),
    ],
)
def test_bad_surfaces_are_rejected(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "surfaces.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_surfaces(path)


def test_a_missing_surfaces_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"surfaces.yaml: {tmp_path / 'surfaces.yaml'} does not exist"):
        load_surfaces(tmp_path / "surfaces.yaml")


def test_settings_defaults_follow_the_seed() -> None:
    settings = load_settings({})
    assert (settings.event_batch_size, settings.event_flush_interval) == (1000, 5.0)
    assert (settings.event_retention_days, settings.feature_retention_days, settings.model_retention_versions) == (
        395,
        90,
        5,
    )
    assert settings.grpc_address == "127.0.0.1:50051"


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:50051", ("127.0.0.1", 50051)), ("dns:///edge:80", ("edge", 80)), ("[::1]:9", ("::1", 9))],
)
def test_grpc_addresses_parse_to_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(address) == expected


@pytest.mark.parametrize("address", ["localhost", "host:port", ":50051", "unix:/tmp/x.sock", "h:70000"])
def test_a_grpc_address_that_is_not_host_and_port_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_host_port(address)


def test_unknown_aura_variables_are_named_with_the_closest_setting() -> None:
    environ = {"AURA_ADMIN_TOKN": "t", "AURA_STATE_DIR": "/s", "AURA_NODE_ID": "n", "AURA_WHATEVER": "1", "PATH": "/"}
    first, second = unknown_aura_variables(environ)
    assert first == "environment: AURA_ADMIN_TOKN is not an AURA setting and is ignored; did you mean AURA_ADMIN_TOKEN?"
    assert second.startswith("environment: AURA_WHATEVER is not an AURA setting and is ignored; the AURA_* settings")
    assert "AURA_STATE_DIR" in second and "AURA_DUCKDB_THREADS" in second


def test_every_aura_variable_the_code_reads_is_known() -> None:
    sources = [
        *REPO.glob("aura/**/*.py"),
        *REPO.glob("server/*.py"),
        *REPO.glob("edge/**/*.py"),
        *REPO.glob("batch/*.py"),
    ]
    read = {name for path in sources for name in re.findall(r"\bAURA_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())}
    assert read, "the scan found no variable"
    assert sorted(read - set(ENV_NAMES.values()) - OTHER_AURA_VARIABLES) == []
