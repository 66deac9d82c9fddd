"""Reading compose.yaml the way Docker Compose does, far enough to test it without a Docker engine.

- `compose_spec_validator()`: the official Compose Specification JSON schema, taken from the
  `check-jsonschema` dev dependency, which ships it as package data (vendor/compose-spec.json).
- `interpolate()` / `required_variables()`: Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `$$`.
- `service_commands()`: the argv of every command a service runs (`command`, `entrypoint`, healthcheck).
- `duration_seconds()`: Compose durations such as `1m30s`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

SCHEMA_PACKAGE = "check_jsonschema.builtin_schemas.vendor"
SCHEMA_RESOURCE = "compose-spec.json"
SCHEMA_DIST = "check-jsonschema"


def load_compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification schema as shipped inside the `check-jsonschema` package."""
    try:
        text = (resources.files(SCHEMA_PACKAGE) / SCHEMA_RESOURCE).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise RuntimeError(
            f"The Compose Specification schema comes from the `{SCHEMA_DIST}` package "
            f"({SCHEMA_PACKAGE}/{SCHEMA_RESOURCE}); install the dev extras: pip install -e '.[dev]'"
        ) from exc
    schema: dict[str, Any] = json.loads(text)
    return schema


def compose_spec_validator() -> Validator:
    """A validator of the draft the schema declares in `$schema` (2020-12: `unevaluatedProperties`)."""
    schema = load_compose_spec_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# --- interpolation -----------------------------------------------------------------------------

_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


class MissingRequiredVariableError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class Reference:
    name: str
    op: str | None
    arg: str


def _references(text: str) -> Iterator[Reference]:
    for match in _TOKEN.finditer(text):
        if match["escaped"]:
            continue
        if match["named"]:
            yield Reference(match["named"], None, "")
            continue
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise ValueError(f"invalid interpolation format in {text!r}")
        yield Reference(braced["name"], braced["op"], braced["arg"] or "")


def _interpolate_str(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        (ref,) = _references(match[0])
        value = env.get(ref.name)
        if ref.op is None:
            return value or ""
        if ref.op == ":-":
            return value if value else ref.arg
        if ref.op == "-":
            return value if value is not None else ref.arg
        if ref.op == ":?":
            if not value:
                raise MissingRequiredVariableError(ref.name, ref.arg)
            return value
        if ref.op == "?":
            if value is None:
                raise MissingRequiredVariableError(ref.name, ref.arg)
            return value
        if ref.op == ":+":
            return ref.arg if value else ""
        return ref.arg if value is not None else ""  # "+"

    return _TOKEN.sub(replace, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """`node` with every string interpolated against `env`, as Compose does before validating."""
    if isinstance(node, str):
        return _interpolate_str(node, env)
    if isinstance(node, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    return node


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def required_variables(node: Any) -> dict[str, str]:
    """Every `${VAR:?message}` / `${VAR?message}` in the document: name -> message."""
    return {
        ref.name: ref.arg for text in _strings(node) for ref in _references(text) if ref.op in (":?", "?")
    }


# --- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceCommand:
    service: str
    kind: str  # "command", "entrypoint" or "healthcheck"
    argv: tuple[str, ...]


def _argv(value: str | list[str]) -> tuple[str, ...]:
    return tuple(shlex.split(value) if isinstance(value, str) else value)


def service_commands(doc: Mapping[str, Any]) -> list[ServiceCommand]:
    """Every command an (interpolated) compose document runs. Shell forms are split with shlex."""
    out: list[ServiceCommand] = []
    for name, service in doc.get("services", {}).items():
        for kind in ("entrypoint", "command"):
            if service.get(kind):
                out.append(ServiceCommand(name, kind, _argv(service[kind])))
        test = (service.get("healthcheck") or {}).get("test")
        if not test or test == ["NONE"]:
            continue
        if isinstance(test, str):  # a plain string is CMD-SHELL
            argv = _argv(test)
        elif test[0] == "CMD":
            argv = tuple(test[1:])
        elif test[0] == "CMD-SHELL":
            argv = _argv(" ".join(test[1:]))
        else:
            raise ValueError(f"service {name}: healthcheck test must start with CMD or CMD-SHELL: {test}")
        out.append(ServiceCommand(name, "healthcheck", argv))
    return out


def option_value(argv: tuple[str, ...], *names: str) -> str | None:
    """The value of `--name VALUE` / `--name=VALUE` / `-n VALUE` in argv, if present."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


# --- durations ---------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: str | int | float) -> float:
    """Compose duration (`10m`, `1m30s`, `1h`) in seconds. A bare number is seconds."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(f"not a Compose duration: {value!r}")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
