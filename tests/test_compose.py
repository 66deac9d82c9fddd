"""compose.yaml and Dockerfile: valid Compose, commands that exist, documented secrets, a scalable worker.

No Docker engine is needed: the file is validated against the official Compose Specification schema
(shipped inside the `check-jsonschema` dev dependency), and the commands it runs are checked against
the project's own CLI and Celery app.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import re
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from packaging.requirements import Requirement

from shared.settings import Settings
from tests.support.compose import (
    MissingRequiredVariableError,
    ServiceCommand,
    compose_spec_validator,
    duration_seconds,
    interpolate,
    option_value,
    required_variables,
    service_commands,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"

# Binaries of the third-party images the compose file uses (checked for healthchecks and commands).
IMAGE_BINARIES = {
    "postgres": {"pg_isready", "psql", "postgres"},
    "redis": {"redis-cli", "redis-server"},
}
SHELL_BUILTINS = {"test", "[", "exit", "true", "false"}


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    """compose.yaml as YAML (anchors and merge keys resolved), before interpolation."""
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    """compose.yaml as Compose sees it once the required variables are set."""
    env = {name: "user:password" if "AUTH" in name else "secret" for name in required_variables(raw_compose)}
    doc: dict[str, Any] = interpolate(raw_compose, env)
    return doc


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def _project_image_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def _image_name(service: dict[str, Any]) -> str:
    """`postgres:16` -> `postgres`; `docker.io/library/redis:7` -> `redis`."""
    return str(service["image"]).rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def _project_image_binaries(pyproject: dict[str, Any]) -> set[str]:
    """What `pip install .` puts on PATH in our image: python, our console scripts, our dependencies'."""
    binaries = {"python", "python3", *pyproject["project"].get("scripts", {})}
    for spec in pyproject["project"]["dependencies"]:
        dist = importlib.metadata.distribution(Requirement(spec).name)
        binaries.update(ep.name for ep in dist.entry_points if ep.group == "console_scripts")
    return binaries


# --- (a) the Compose Specification -------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification_schema(compose: dict[str, Any]) -> None:
    errors = sorted(compose_spec_validator().iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "compose.yaml breaks the Compose Specification:\n" + "\n".join(
        f"  at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_compose_file_has_no_obsolete_version_key(raw_compose: dict[str, Any]) -> None:
    assert "version" not in raw_compose


def test_compose_spec_schema_uses_draft_2020_12_validator() -> None:
    # The schema relies on `unevaluatedProperties`; an older draft's validator would ignore it.
    validator = compose_spec_validator()
    assert validator.META_SCHEMA["$id"].startswith("https://json-schema.org/draft/2020-12/")


MINIMAL_VALID: dict[str, Any] = {
    "services": {
        "app": {
            "image": "busybox",
            "depends_on": {"db": {"condition": "service_healthy"}},
            "healthcheck": {"test": ["CMD", "true"], "interval": "5s"},
        },
        "db": {"image": "postgres:16"},
    }
}


def _broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL_VALID)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def test_compose_spec_validator_accepts_a_minimal_valid_document() -> None:
    assert list(compose_spec_validator().iter_errors(MINIMAL_VALID)) == []


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(_broken(("servicez",), {}), id="unknown-top-level-key"),
        pytest.param(_broken(("services", "app", "comand"), "true"), id="misspelt-service-key"),
        pytest.param(
            _broken(("services", "app", "depends_on", "db", "condition"), "healthy"),
            id="unknown-depends-on-condition",
        ),
        pytest.param(
            _broken(("services", "app", "healthcheck", "intervall"), "5s"), id="unknown-healthcheck-key"
        ),
        pytest.param(_broken(("services", "app", "ports"), "8000:8000"), id="ports-not-a-list"),
        pytest.param(_broken(("services",), ["app"]), id="services-not-a-mapping"),
    ],
)
def test_compose_spec_validator_rejects_a_broken_document(doc: dict[str, Any]) -> None:
    assert list(compose_spec_validator().iter_errors(doc)), "the schema accepted an invalid document"


# --- (b) every command the compose file runs exists --------------------------------------------


def _commands(compose: dict[str, Any], program: str) -> list[ServiceCommand]:
    return [c for c in service_commands(compose) if c.argv and c.argv[0] == program]


def test_autopack_console_script_points_at_an_importable_callable(pyproject: dict[str, Any]) -> None:
    target = pyproject["project"]["scripts"]["autopack"]
    module_name, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module_name), attr)), target


def test_every_autopack_command_in_compose_is_a_real_cli_subcommand(compose: dict[str, Any]) -> None:
    commands = _commands(compose, "autopack")
    assert commands, "compose.yaml runs no `autopack` command"
    try:
        from api.cli import cli
    except ImportError as exc:  # pragma: no cover - message for a missing CLI
        pytest.fail(f"cannot import the CLI group `api.cli.cli`: {exc}")
    assert isinstance(cli, click.Group)

    for command in commands:
        where = f"service {command.service} ({command.kind}): {' '.join(command.argv)}"
        ctx = click.Context(cli, info_name="autopack")
        current: click.Command = cli
        args = list(command.argv[1:])
        while isinstance(current, click.Group):
            assert args and not args[0].startswith("-"), f"{where}: no subcommand given to {current.name}"
            sub = current.get_command(ctx, args[0])
            assert sub is not None, f"{where}: `{args.pop(0)}` is not a subcommand of {current.name}"
            args.pop(0)
            ctx = click.Context(sub, info_name=sub.name, parent=ctx)
            current = sub
        # The leaf command must accept the remaining options and arguments as written.
        try:
            current.make_context(current.name, args, parent=ctx.parent)
        except click.UsageError as exc:
            pytest.fail(f"{where}: {exc.format_message()}")


def _celery_subcommand(argv: tuple[str, ...]) -> str | None:
    """The first word after celery's global options: `flower`, `inspect`, `worker`, ..."""
    args = iter(argv[1:])
    for arg in args:
        if arg in ("--app", "-A", "--broker", "-b", "--workdir", "--config", "--loglevel", "-l"):
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def test_every_celery_command_in_compose_uses_an_importable_app_and_a_known_subcommand(
    compose: dict[str, Any],
) -> None:
    from celery import Celery
    from celery.bin.celery import celery as celery_cli

    commands = _commands(compose, "celery")
    assert commands, "compose.yaml runs no `celery` command"
    for command in commands:
        where = f"service {command.service} ({command.kind}): {' '.join(command.argv)}"
        app_path = option_value(command.argv, "--app", "-A")
        assert app_path, f"{where}: no --app"
        module_name, _, attr = app_path.partition(":")
        try:
            app = getattr(importlib.import_module(module_name), attr or "app")
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"{where}: cannot import {app_path}: {exc}")
        assert isinstance(app, Celery), f"{where}: {app_path} is not a Celery app"
        assert _celery_subcommand(command.argv) in celery_cli.commands, f"{where}: unknown celery subcommand"


def test_every_command_uses_a_binary_its_image_has(
    compose: dict[str, Any], pyproject: dict[str, Any]
) -> None:
    ours = _project_image_binaries(pyproject)
    for command in service_commands(compose):
        service = compose["services"][command.service]
        if "build" in service:
            available, image = ours, "the project image"
        else:
            image = _image_name(service)
            available = IMAGE_BINARIES.get(image, set())
        if command.kind == "healthcheck":
            available = available | SHELL_BUILTINS
        program = command.argv[0]
        assert program in available, (
            f"service {command.service} ({command.kind}) runs `{program}`, which {image} does not have"
        )


def test_python_snippets_in_commands_compile(compose: dict[str, Any]) -> None:
    for command in service_commands(compose):
        if command.argv[0].startswith("python") and "-c" in command.argv:
            code = command.argv[command.argv.index("-c") + 1]
            compile(code, f"<{command.service} {command.kind}>", "exec")


def test_api_healthcheck_requests_the_health_endpoint_and_flower_its_auth_exempt_healthcheck(
    compose: dict[str, Any],
) -> None:
    checks = {c.service: " ".join(c.argv) for c in service_commands(compose) if c.kind == "healthcheck"}
    assert re.search(r"http://(127\.0\.0\.1|localhost):8000/health\b", checks["api"])
    assert re.search(r"http://(127\.0\.0\.1|localhost):5555/healthcheck\b", checks["flower"])


def test_worker_healthcheck_pings_its_own_celery_node(compose: dict[str, Any]) -> None:
    (check,) = [c for c in service_commands(compose) if c.service == "worker" and c.kind == "healthcheck"]
    assert check.argv[0] == "celery"
    assert "inspect" in check.argv and "ping" in check.argv
    assert option_value(check.argv, "--destination", "-d") == "celery@$HOSTNAME"


# --- (c) secrets -------------------------------------------------------------------------------


def _env_example_names() -> set[str]:
    if not ENV_EXAMPLE.exists():
        pytest.fail(
            f"{ENV_EXAMPLE.name} is missing: it must document every variable compose.yaml requires "
            "(`NAME=` lines)"
        )
    pattern = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    return {m[1] for line in lines if (m := pattern.match(line))}


def test_compose_requires_the_postgres_password_and_flower_credentials(raw_compose: dict[str, Any]) -> None:
    required = required_variables(raw_compose)
    assert {"POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"} <= set(required)
    assert all(message.strip() for message in required.values()), "each required variable says why"
    with pytest.raises(MissingRequiredVariableError):
        interpolate(raw_compose, {})


def test_flower_is_autopack_flower_on_all_interfaces_with_the_required_credential_as_its_setting(
    compose: dict[str, Any],
) -> None:
    flower = compose["services"]["flower"]
    assert flower["command"][:2] == ["autopack", "flower"]
    assert "--address=0.0.0.0" in flower["command"], "loopback only: the published port would not reach it"
    # The compose variable reaches the one setting `autopack flower` reads (shared/settings.py).
    assert flower["environment"]["AUTOPACK_FLOWER_BASIC_AUTH"] == "user:password"
    assert "flower_basic_auth" in Settings.model_fields
    assert not [name for name in flower["environment"] if name.startswith("FLOWER_")]


def test_every_required_compose_variable_is_documented_in_env_example(raw_compose: dict[str, Any]) -> None:
    missing = set(required_variables(raw_compose)) - _env_example_names()
    assert not missing, f"compose.yaml requires {sorted(missing)}, which {ENV_EXAMPLE.name} does not list"


# --- (d) a scalable, patient worker ------------------------------------------------------------


def test_worker_can_be_scaled_so_has_no_container_name_or_host_ports(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_worker_waits_more_than_a_minute_for_running_phases_before_being_killed(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    assert duration_seconds(worker["stop_grace_period"]) > 60


def test_worker_keeps_its_workspace_in_a_named_volume(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    workspace = worker["environment"]["AUTOPACK_WORKSPACE_DIR"]
    mounts = [v.split(":") if isinstance(v, str) else [v["source"], v["target"]] for v in worker["volumes"]]
    assert any(target == workspace and source in compose["volumes"] for source, target, *_ in mounts)


# --- (e) start-up order ------------------------------------------------------------------------


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):  # short syntax means service_started
        return {name: {"condition": "service_started"} for name in deps}
    return {name: spec or {"condition": "service_started"} for name, spec in deps.items()}


def test_every_dependency_on_postgres_or_redis_waits_until_it_is_healthy(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for dep, spec in _depends_on(service).items():
            if dep in ("postgres", "redis"):
                assert spec.get("condition") == "service_healthy", f"{name} -> {dep}: {spec}"


def test_api_and_worker_start_after_healthy_stores_and_completed_migrations(compose: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        deps = _depends_on(compose["services"][name])
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", name


def test_every_service_waited_on_for_health_defines_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for dep, spec in _depends_on(service).items():
            if spec.get("condition") == "service_healthy":
                assert compose["services"][dep].get("healthcheck"), f"{name} waits on {dep}'s health"


def test_migrate_runs_once_and_is_never_restarted(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["autopack", "db", "upgrade"]
    assert migrate["restart"] == "no"


# --- shared settings and the image -------------------------------------------------------------


def test_project_services_share_one_image_and_the_fleet_settings(compose: dict[str, Any]) -> None:
    services = _project_image_services(compose)
    assert set(services) == {"migrate", "api", "worker", "flower"}
    assert len({svc["image"] for svc in services.values()}) == 1
    for name, svc in services.items():
        env = svc["environment"]
        assert env["AUTOPACK_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["AUTOPACK_DATABASE_URL"], name
        assert env["AUTOPACK_BROKER_URL"].startswith("redis://redis:6379/"), name


def test_api_listens_on_all_interfaces_inside_its_container(compose: dict[str, Any]) -> None:
    assert compose["services"]["api"]["environment"]["AUTOPACK_API_HOST"] == "0.0.0.0"


def test_compose_environment_names_are_real_settings(compose: dict[str, Any]) -> None:
    from shared.settings import env_defaults

    known = set(env_defaults())
    for name, service in _project_image_services(compose).items():
        unknown = {k for k in service["environment"] if k.startswith("AUTOPACK_")} - known
        assert not unknown, f"service {name} sets unknown settings {sorted(unknown)}"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and not line.startswith("#"))
    ]


def test_dockerfile_runs_the_api_as_a_non_root_user_with_git_installed() -> None:
    instructions = _dockerfile_instructions()
    final = instructions[max(i for i, (word, _) in enumerate(instructions) if word == "FROM") :]
    assert final[0][1].startswith("python:${PYTHON_VERSION}-slim") or "python:3.11-slim" in final[0][1]
    users = [rest for word, rest in final if word == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "the image must not run as root"
    assert [rest for word, rest in final if word == "CMD"][-1] == '["autopack", "api"]'
    assert any(word == "EXPOSE" and "8000" in rest.split() for word, rest in final)
    assert any(word == "RUN" and re.search(r"apt-get install .*\bgit\b", rest) for word, rest in final)
    assert any(
        word == "ENV" and "AUTOPACK_WORKSPACE_DIR=/var/lib/autopack/workspace" in rest for word, rest in final
    )


def test_the_image_has_bubblewrap_and_the_worker_may_create_its_sandbox_namespaces(
    compose: dict[str, Any],
) -> None:
    final = _dockerfile_instructions()
    assert any(word == "RUN" and re.search(r"apt-get install .*\bbubblewrap\b", rest) for word, rest in final)
    options = set(compose["services"]["worker"]["security_opt"])
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= options
    assert "cap_add" not in compose["services"]["worker"]  # the box needs no capability
    assert "security_opt" not in compose["services"]["api"]  # only the worker runs repository code
