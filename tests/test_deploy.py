"""deploy/k8s: valid Kubernetes and KEDA objects, real commands, real settings, a worker that drains.

No cluster is needed: core objects are validated against the strict Kubernetes OpenAPI schemas shipped
in the `kubernetes-validate` dev dependency, the KEDA ScaledObject against a strict schema transcribed
from KEDA's CRD (tests/support/k8s.py); commands are checked against the project's own CLI and Celery app.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import Settings
from tests.support.k8s import (
    Manifest,
    autopack_command_error,
    celery_command_error,
    containers,
    keda_errors,
    kubernetes_errors,
    load_manifests,
    manifest_errors,
    pod_commands,
    pod_spec,
)
from workers.celery_app import QUEUE_KEYS

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
CELERY_APP = "workers.celery_app:app"
SECRET = "autopack-secrets"
CONFIGMAP = "autopack-config"

# Settings the manifests use before shared.settings.Settings has them (see deploy/README.md).
DRAIN_ENV = "AUTOPACK_DRAIN_SECONDS"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    found = load_manifests(K8S)
    assert found, f"no manifests in {K8S}"
    return found


def _one(manifests: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    matches = [m.doc for m in manifests if m.kind == kind and m.name == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def api(manifests: list[Manifest]) -> dict[str, Any]:
    return _one(manifests, "Deployment", "autopack-api")


@pytest.fixture(scope="module")
def worker(manifests: list[Manifest]) -> dict[str, Any]:
    return _one(manifests, "Deployment", "autopack-worker")


@pytest.fixture(scope="module")
def flower(manifests: list[Manifest]) -> dict[str, Any]:
    return _one(manifests, "Deployment", "autopack-flower")


@pytest.fixture(scope="module")
def scaled_object(manifests: list[Manifest]) -> dict[str, Any]:
    (doc,) = [m.doc for m in manifests if m.kind == "ScaledObject"]
    return doc


@pytest.fixture(scope="module")
def configmap(manifests: list[Manifest]) -> dict[str, Any]:
    return _one(manifests, "ConfigMap", CONFIGMAP)


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(doc)["containers"]  # type: ignore[index]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


# --- (a) every manifest is a valid object ------------------------------------------------------


def test_every_manifest_is_valid_against_the_strict_kubernetes_or_keda_schema(
    manifests: list[Manifest],
) -> None:
    problems = [f"{m.file} {m.kind}/{m.name} {error}" for m in manifests for error in manifest_errors(m.doc)]
    assert not problems, "invalid manifests:\n  " + "\n  ".join(problems)


def test_manifests_are_namespace_agnostic(manifests: list[Manifest]) -> None:
    assert not [m.file for m in manifests if "namespace" in m.doc.get("metadata", {})]


def test_kustomization_lists_every_manifest_file_and_nothing_else() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    on_disk = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk
    assert "namespace" not in kustomization


def test_every_container_uses_the_project_image_that_kustomize_can_retag(manifests: list[Manifest]) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    image_names = {entry["name"] for entry in kustomization.get("images", [])}
    for m in manifests:
        for container in containers(m.doc):
            assert container["image"].split(":", 1)[0] in image_names, f"{m.file}: {container['image']}"


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "x", "image": "busybox", "ports": [{"containerPort": 80}]}]},
            },
        },
    }


def _scaled_object() -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {
            "scaleTargetRef": {"name": "x"},
            "minReplicaCount": 1,
            "triggers": [{"type": "redis", "metadata": {"listName": "q", "listLength": "2"}}],
        },
    }


def _broken(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()
_CONTAINER = ("spec", "template", "spec", "containers", 0)


def test_validators_accept_minimal_valid_objects() -> None:
    assert kubernetes_errors(_deployment()) == []
    assert keda_errors(_scaled_object()) == []


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(_broken(_deployment(), ("spec", "replica"), 2), id="deployment-misspelt-replicas"),
        pytest.param(_broken(_deployment(), ("spec", "replicas"), "two"), id="deployment-replicas-not-int"),
        pytest.param(_broken(_deployment(), ("spec", "selector"), _DELETE), id="deployment-without-selector"),
        pytest.param(_broken(_deployment(), (*_CONTAINER, "name"), _DELETE), id="container-without-name"),
        pytest.param(_broken(_deployment(), (*_CONTAINER, "comand"), ["x"]), id="container-misspelt-command"),
        pytest.param(
            _broken(_deployment(), (*_CONTAINER, "ports", 0, "containerPort"), "http"), id="port-not-int"
        ),
        pytest.param(_broken(_deployment(), ("kind",), "Deploymnet"), id="unknown-kind"),
        pytest.param(
            _broken(_scaled_object(), ("spec", "scaleTargetRef"), _DELETE), id="scaledobject-without-target"
        ),
        pytest.param(_broken(_scaled_object(), ("spec", "minReplicas"), 1), id="scaledobject-misspelt-field"),
        pytest.param(
            _broken(_scaled_object(), ("spec", "triggers", 0, "metadata", "listLength"), 2),
            id="scaledobject-trigger-metadata-not-string",
        ),
        pytest.param(_broken(_scaled_object(), ("spec", "triggers"), _DELETE), id="scaledobject-no-triggers"),
        pytest.param(_broken(_scaled_object(), ("kind",), "ScaledObjekt"), id="unknown-keda-kind"),
    ],
)
def test_validators_reject_an_invalid_manifest(doc: dict[str, Any]) -> None:
    assert manifest_errors(doc), "the schema accepted an invalid manifest"


# --- (b) every command the manifests run exists -------------------------------------------------


def test_every_command_is_a_real_autopack_subcommand_or_celery_on_our_app(manifests: list[Manifest]) -> None:
    seen = set()
    for m in manifests:
        for command in pod_commands(m):
            program = command.argv[0]
            seen.add(program)
            if program == "autopack":
                error = autopack_command_error(command.argv)
            elif program == "celery":
                error = celery_command_error(command.argv, CELERY_APP)
            else:
                error = f"runs `{program}`, neither `autopack` nor `celery --app {CELERY_APP}`"
            assert error is None, f"{command.where}: {' '.join(command.argv)}: {error}"
    assert "autopack" in seen and seen <= {"autopack", "celery"}


def test_migrate_job_runs_db_upgrade_once_without_restarting_in_place(manifests: list[Manifest]) -> None:
    (job,) = [m.doc for m in manifests if m.kind == "Job"]
    assert _container(job)["command"] == ["autopack", "db", "upgrade"]
    assert pod_spec(job)["restartPolicy"] == "Never"  # type: ignore[index]


def test_api_worker_and_flower_run_their_processes(
    api: dict[str, Any], worker: dict[str, Any], flower: dict[str, Any]
) -> None:
    assert _container(api)["command"] == ["autopack", "api"]
    assert _container(worker)["command"] == ["autopack", "worker"]
    argv = _container(flower)["command"]
    assert argv[:2] == ["autopack", "flower"]
    # `autopack flower` binds loopback by default, which neither the Service nor the probes reach.
    assert "--address=0.0.0.0" in argv and "--port=5555" in argv


# --- (c) settings and secrets ------------------------------------------------------------------


def _autopack_env_names(manifests: list[Manifest]) -> dict[str, str]:
    """Every AUTOPACK_* name a manifest sets: container env, ConfigMap keys, secret keys -> where."""
    names: dict[str, str] = {}
    for m in manifests:
        if m.kind == "ConfigMap":
            names.update({key: f"{m.file} data" for key in m.doc.get("data", {})})
        for container in containers(m.doc):
            for item in container.get("env", []):
                names[item["name"]] = f"{m.file} {container['name']} env"
                ref = item.get("valueFrom", {}).get("secretKeyRef") or {}
                if "key" in ref:
                    names[ref["key"]] = f"{m.file} {container['name']} secret key"
    return {name: where for name, where in names.items() if name.startswith("AUTOPACK_")}


def test_every_autopack_variable_is_a_real_setting(manifests: list[Manifest]) -> None:
    known = set(Settings.model_fields)
    unknown = {
        name: where
        for name, where in _autopack_env_names(manifests).items()
        if name.removeprefix("AUTOPACK_").lower() not in known
    }
    assert not unknown, f"not settings in shared/settings.py: {unknown}"


def test_the_worker_manifest_sets_the_drain_window(manifests: list[Manifest]) -> None:
    used = {name.removeprefix("AUTOPACK_").lower() for name in _autopack_env_names(manifests)}
    assert "drain_seconds" in used


def test_soft_shutdown_setting_reaches_celery() -> None:
    from workers.celery_app import celery_config

    settings = Settings(broker_url="redis://x:6379/0", soft_shutdown_seconds=123, _env_file=None)  # type: ignore[call-arg]
    assert celery_config(settings)["worker_soft_shutdown_timeout"] == 123


SECRET_SETTINGS = (
    "AUTOPACK_DATABASE_URL",
    "AUTOPACK_BROKER_URL",
    "AUTOPACK_ANTHROPIC_API_KEY",
    "AUTOPACK_FLOWER_BASIC_AUTH",
)


def test_database_and_broker_urls_come_from_the_secret_never_literal(manifests: list[Manifest]) -> None:
    for m in manifests:
        for container in containers(m.doc):
            for name, item in _env(container).items():
                if name in SECRET_SETTINGS:
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    assert ref and ref["name"] == SECRET and ref["key"] == name, f"{m.file}: {name}"
                    assert "value" not in item


def test_api_worker_and_flower_get_database_and_broker_from_the_secret_and_settings_from_the_configmap(
    api: dict[str, Any], worker: dict[str, Any], flower: dict[str, Any]
) -> None:
    for doc in (api, worker, flower):
        container = _container(doc)
        assert {"AUTOPACK_DATABASE_URL", "AUTOPACK_BROKER_URL"} <= set(_env(container))
        assert {"configMapRef": {"name": CONFIGMAP}} in container.get("envFrom", [])


def test_only_the_worker_gets_the_anthropic_key_and_it_is_optional(
    manifests: list[Manifest], worker: dict[str, Any]
) -> None:
    ref = _env(_container(worker))["AUTOPACK_ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True
    for m in manifests:
        if m.doc is not worker:
            for container in containers(m.doc):
                assert "AUTOPACK_ANTHROPIC_API_KEY" not in _env(container), m.file


def test_no_container_takes_the_whole_secret_as_environment(manifests: list[Manifest]) -> None:
    for m in manifests:
        for container in containers(m.doc):
            assert not [src for src in container.get("envFrom", []) if "secretRef" in src], m.file


def test_flower_takes_basic_auth_from_the_secret(flower: dict[str, Any]) -> None:
    ref = _env(_container(flower))["AUTOPACK_FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": SECRET, "key": "AUTOPACK_FLOWER_BASIC_AUTH"}  # not optional: no login, no Flower


# --- (d) probes and services -------------------------------------------------------------------


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_api_is_ready_and_alive_only_while_get_health_on_port_8000_succeeds(api: dict[str, Any]) -> None:
    container = _container(api)
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert _port_number(container, get["port"]) == 8000, probe
    assert _env(container)["AUTOPACK_API_PORT"]["value"] == "8000"


def test_flower_probes_use_its_auth_exempt_healthcheck(flower: dict[str, Any]) -> None:
    container = _container(flower)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthcheck"
        assert _port_number(container, container[probe]["httpGet"]["port"]) == 5555


@pytest.mark.parametrize(("deployment", "port"), [("autopack-api", 8000), ("autopack-flower", 5555)])
def test_service_selects_its_deployments_pods_and_reaches_the_container_port(
    manifests: list[Manifest], deployment: str, port: int
) -> None:
    doc = _one(manifests, "Deployment", deployment)
    service = _one(manifests, "Service", deployment)
    labels = doc["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert _port_number(_container(doc), service_port["targetPort"]) == port


def test_every_deployment_selector_matches_its_pod_labels(manifests: list[Manifest]) -> None:
    for m in manifests:
        if m.kind == "Deployment":
            labels = m.doc["spec"]["template"]["metadata"]["labels"]
            assert m.doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), m.name


# --- (e) a worker that drains ------------------------------------------------------------------


def _drain_seconds(worker: dict[str, Any]) -> float:
    return float(_env(_container(worker))[DRAIN_ENV]["value"])


def test_worker_grace_period_leaves_time_to_hand_back_after_the_drain_window(worker: dict[str, Any]) -> None:
    drain = _drain_seconds(worker)
    assert drain > 0
    # After the window: stop the command, record the hand-back, release the lease, enqueue, exit.
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= drain + 30  # type: ignore[index]


def test_worker_stops_with_the_warm_shutdown_that_ends_when_its_phases_do(worker: dict[str, Any]) -> None:
    # REMAP_SIGTERM=SIGQUIT would start Celery's soft shutdown, which sleeps its whole window
    # whenever a task was running, even one that finished a second later.
    env = _env(_container(worker))
    assert "REMAP_SIGTERM" not in env
    assert float(env.get("AUTOPACK_SOFT_SHUTDOWN_SECONDS", {"value": 0})["value"]) == 0


def test_worker_has_no_liveness_probe_that_could_cut_a_drain_short(worker: dict[str, Any]) -> None:
    assert "livenessProbe" not in _container(worker)


def test_worker_keeps_its_workspace_on_a_per_pod_volume_at_the_workspace_dir(
    worker: dict[str, Any], configmap: dict[str, Any]
) -> None:
    workspace = configmap["data"]["AUTOPACK_WORKSPACE_DIR"]
    volumes = {v["name"]: v for v in pod_spec(worker)["volumes"]}  # type: ignore[index]
    (mount,) = [m for m in _container(worker)["volumeMounts"] if m["mountPath"] == workspace]
    volume = volumes[mount["name"]]
    assert "emptyDir" in volume or "ephemeral" in volume


def test_worker_replicas_are_left_to_keda(worker: dict[str, Any]) -> None:
    assert "replicas" not in worker["spec"]


# --- (f) KEDA ----------------------------------------------------------------------------------


def test_scaled_object_targets_the_worker_deployment(
    scaled_object: dict[str, Any], worker: dict[str, Any]
) -> None:
    target = scaled_object["spec"]["scaleTargetRef"]
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == worker["metadata"]["name"]


def test_scaled_object_scales_on_the_length_of_every_priority_list_of_the_queue(
    scaled_object: dict[str, Any],
) -> None:
    triggers = scaled_object["spec"]["triggers"]
    # kombu keeps one Redis list per priority step: interactive phases and campaign children both count.
    assert [t["metadata"]["listName"] for t in triggers] == list(QUEUE_KEYS)
    assert all(t["type"] == "redis" and int(t["metadata"]["listLength"]) >= 1 for t in triggers)


def test_scaled_object_bounds_replicas_and_cools_down(scaled_object: dict[str, Any]) -> None:
    spec = scaled_object["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0


def test_scale_down_waits_at_least_one_drain_window(
    scaled_object: dict[str, Any], worker: dict[str, Any]
) -> None:
    behavior = scaled_object["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert behavior["stabilizationWindowSeconds"] >= _drain_seconds(worker)


def test_worker_container_may_create_the_namespaces_of_its_sandbox_without_any_capability(
    worker: dict[str, Any],
) -> None:
    context = _container(worker)["securityContext"]
    assert context["seccompProfile"] == {"type": "Unconfined"}  # RuntimeDefault refuses unshare/mount
    assert context["appArmorProfile"] == {"type": "Unconfined"}  # the default profile refuses mount
    assert context["procMount"] == "Unmasked"  # masked /proc makes a fresh /proc "too revealing"
    assert pod_spec(worker)["hostUsers"] is False  # Unmasked needs the pod's own user namespace
    assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
    assert pod_spec(worker)["securityContext"]["runAsNonRoot"] is True
