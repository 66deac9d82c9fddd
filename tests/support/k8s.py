"""Reading deploy/k8s the way the API server and KEDA would, far enough to test it without a cluster.

- `kubernetes_errors()`: core objects (Deployment, Service, Job, ConfigMap, ...) against the strict
  Kubernetes OpenAPI JSON schemas shipped inside the `kubernetes-validate` dev dependency (unknown
  fields, wrong types and missing required fields are errors).
- `keda_errors()`: the KEDA ScaledObject against a strict schema transcribed here from KEDA's CRD,
  whose HPA `behavior` and `metadata` are checked with the Kubernetes definitions above.
- `containers()`, `pod_commands()`: every container and every argv a pod runs (command + args, exec probes).
- `autopack_command_error()`, `celery_command_error()`: is an argv a real `autopack` / `celery` command?
"""

from __future__ import annotations

import importlib
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import click
import jsonschema
import yaml
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.30"
KEDA_API_VERSION = "keda.sh/v1alpha1"


@dataclass(frozen=True)
class Manifest:
    file: str
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind"))

    @property
    def name(self) -> str:
        return str(self.doc.get("metadata", {}).get("name"))


def load_manifests(directory: Path, exclude: tuple[str, ...] = ("kustomization.yaml",)) -> list[Manifest]:
    out = []
    for path in sorted(directory.glob("*.y*ml")):
        if path.name in exclude:
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                out.append(Manifest(path.name, doc))
    return out


# --- schemas -----------------------------------------------------------------------------------


def kubernetes_errors(doc: dict[str, Any], version: str = KUBERNETES_VERSION) -> list[str]:
    """Errors of a core Kubernetes object against the strict schema of that Kubernetes version."""
    try:
        import kubernetes_validate
    except ImportError as exc:  # pragma: no cover - message for a missing dev dependency
        raise RuntimeError(
            "The Kubernetes schemas come from the `kubernetes-validate` package; "
            "install the dev extras: pip install -e '.[dev]'"
        ) from exc
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"at {'/'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    except KeyError as exc:  # no apiVersion or kind
        return [f"missing {exc}"]
    return []


# KEDA's ScaledObject (keda.sh/v1alpha1), transcribed from the openAPIV3Schema of KEDA 2.x's CRD
# (config/crd/bases/keda.sh_scaledobjects.yaml) and made strict: no PyPI package ships it without side
# effects (cloudcoil-models-keda installs a pytest plugin that breaks this suite). The HPA `behavior`
# block is KEDA's copy of Kubernetes' autoscaling/v2 type, so it is checked against that definition
# from `kubernetes-validate`.
_K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/"
_INT = {"type": "integer"}
_STR = {"type": "string"}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KEDA_API_VERSION},
        "kind": {"const": "ScaledObject"},
        "metadata": {"$ref": _K8S_DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": _STR,
                        "kind": _STR,
                        "name": _STR,
                        "envSourceContainerName": _STR,
                    },
                },
                "pollingInterval": _INT,
                "cooldownPeriod": _INT,
                "initialCooldownPeriod": _INT,
                "idleReplicaCount": _INT,
                "minReplicaCount": _INT,
                "maxReplicaCount": _INT,
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": _INT, "replicas": _INT, "behavior": _STR},
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": _STR,
                                "behavior": {
                                    "$ref": _K8S_DEFS
                                    + "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"
                                },
                            },
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "formula": _STR,
                                "target": _STR,
                                "activationTarget": _STR,
                                "metricType": _STR,
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": _STR,
                            "name": _STR,
                            "metadata": {"type": "object", "additionalProperties": _STR},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {"name": _STR, "kind": _STR},
                            },
                        },
                    },
                },
            },
        },
        "status": {"type": "object"},
    },
}
KEDA_SCHEMAS = {"ScaledObject": SCALED_OBJECT_SCHEMA}


@cache
def _keda_validator(kind: str) -> jsonschema.Draft202012Validator:
    if kind not in KEDA_SCHEMAS:
        raise LookupError(f"no schema for KEDA kind {kind!r} (known: {sorted(KEDA_SCHEMAS)})")
    from kubernetes_validate.utils import schema_contents

    version = _kubernetes_schema_dir(KUBERNETES_VERSION)
    definitions = schema_contents(f"kubernetes-json-schema/{version}/_definitions.json", KUBERNETES_VERSION)
    registry: Registry = Resource.from_contents(definitions) @ Registry()
    schema = KEDA_SCHEMAS[kind]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _kubernetes_schema_dir(version: str) -> str:
    from kubernetes_validate.utils import all_versions, major_minor

    (newest,) = [v for v in all_versions() if major_minor(v) <= major_minor(version)][-1:]
    return f"v{newest}-local-strict"


def keda_errors(doc: dict[str, Any]) -> list[str]:
    """Errors of a KEDA object (ScaledObject)."""
    if doc.get("apiVersion") != KEDA_API_VERSION:
        return [f"apiVersion {doc.get('apiVersion')!r} is not {KEDA_API_VERSION}"]
    try:
        validator = _keda_validator(str(doc.get("kind")))
    except LookupError as exc:
        return [str(exc)]
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def manifest_errors(doc: dict[str, Any]) -> list[str]:
    if str(doc.get("apiVersion", "")).startswith("keda.sh/"):
        return keda_errors(doc)
    return kubernetes_errors(doc)


# --- pods and commands -------------------------------------------------------------------------


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a Deployment, StatefulSet, DaemonSet, Job (or a CronJob's job)."""
    spec = doc.get("spec", {})
    if doc.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    template = spec.get("template")
    return template.get("spec") if isinstance(template, dict) else None


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc) or {}
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


@dataclass(frozen=True)
class PodCommand:
    where: str
    argv: tuple[str, ...]


def _unwrap_shell(argv: tuple[str, ...]) -> tuple[str, ...]:
    """`sh -c "celery ... $HOSTNAME"` -> the argv the shell runs."""
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        return tuple(shlex.split(argv[2]))
    return argv


def pod_commands(manifest: Manifest) -> Iterator[PodCommand]:
    for container in containers(manifest.doc):
        where = f"{manifest.file} {manifest.kind}/{manifest.name} container {container.get('name')}"
        argv = (*container.get("command", []), *container.get("args", []))
        if argv:
            yield PodCommand(f"{where} (command)", _unwrap_shell(tuple(argv)))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            exec_ = (container.get(probe) or {}).get("exec")
            if exec_:
                yield PodCommand(f"{where} ({probe})", _unwrap_shell(tuple(exec_["command"])))


def autopack_command_error(argv: tuple[str, ...]) -> str | None:
    """None when `autopack ARGS...` names a real subcommand that accepts the arguments as written."""
    from api.cli import cli

    assert isinstance(cli, click.Group)
    ctx = click.Context(cli, info_name="autopack")
    current: click.Command = cli
    args = list(argv[1:])
    while isinstance(current, click.Group):
        if not args or args[0].startswith("-"):
            return f"no subcommand given to {current.name}"
        sub = current.get_command(ctx, args[0])
        if sub is None:
            return f"`{args[0]}` is not a subcommand of {current.name}"
        args.pop(0)
        ctx = click.Context(sub, info_name=sub.name, parent=ctx)
        current = sub
    try:
        current.make_context(current.name, args, parent=ctx.parent)
    except click.UsageError as exc:
        return exc.format_message()
    return None


_CELERY_GLOBAL_OPTIONS_WITH_VALUE = (
    "--app",
    "-A",
    "--broker",
    "-b",
    "--workdir",
    "--config",
    "--loglevel",
    "-l",
)


def option_value(argv: tuple[str, ...], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def celery_subcommand(argv: tuple[str, ...]) -> str | None:
    args = iter(argv[1:])
    for arg in args:
        if arg in _CELERY_GLOBAL_OPTIONS_WITH_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def celery_command_error(argv: tuple[str, ...], expected_app: str) -> str | None:
    """None when `celery --app APP SUBCOMMAND ...` uses `expected_app` (importable) and a known subcommand."""
    from celery import Celery
    from celery.bin.celery import celery as celery_cli

    app_path = option_value(argv, "--app", "-A")
    if app_path != expected_app:
        return f"--app is {app_path!r}, not {expected_app!r}"
    module_name, _, attr = app_path.partition(":")
    app = getattr(importlib.import_module(module_name), attr or "app")
    if not isinstance(app, Celery):
        return f"{app_path} is not a Celery app"
    sub = celery_subcommand(argv)
    if sub not in celery_cli.commands:
        return f"`{sub}` is not a celery subcommand"
    return None
