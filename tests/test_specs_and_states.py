"""Spec validation and the state machine, without services."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.errors import InvalidTransition
from shared.specs import RunSpec
from shared.states import PhaseState, RunState, check_phase_move, check_run_move


def spec(**phase: Any) -> dict[str, Any]:
    return {"repo": "/tmp/r", "phases": [{"name": "p", "scope": ["src/"], "command": "true", **phase}]}


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", ".git/config", ".GIT/hooks/pre-commit", "a\\b", " src"]
)
def test_scope_paths_must_be_plain_relative_paths_outside_git(path: str) -> None:
    with pytest.raises(ValidationError, match="scope"):
        RunSpec.model_validate(spec(scope=[path]))


def test_phase_names_must_be_unique_within_a_run() -> None:
    body = spec()
    body["phases"].append(dict(body["phases"][0]))
    with pytest.raises(ValidationError, match="unique"):
        RunSpec.model_validate(body)


def test_spec_hash_ignores_config_and_name_but_not_phases() -> None:
    a = RunSpec.model_validate(spec())
    b = RunSpec.model_validate(spec() | {"name": "other", "config": {"max_attempts": 5}})
    c = RunSpec.model_validate(spec(goal="different"))
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()


def test_allowed_state_moves_pass_and_others_raise() -> None:
    check_run_move(RunState.QUEUED, RunState.RUNNING)
    check_phase_move(PhaseState.EXECUTING, PhaseState.COMPLETE)
    with pytest.raises(InvalidTransition):
        check_run_move(RunState.DONE_SUCCESS, RunState.RUNNING)
    with pytest.raises(InvalidTransition):
        check_phase_move(PhaseState.COMPLETE, PhaseState.EXECUTING)
    with pytest.raises(InvalidTransition):
        check_phase_move(PhaseState.QUEUED, PhaseState.COMPLETE)


def test_network_is_off_unless_a_phase_asks_and_asking_changes_the_spec_hash_only_then() -> None:
    plain = RunSpec.model_validate(spec())
    asking = RunSpec.model_validate(spec(network=True))
    assert plain.phases[0].network is False and asking.phases[0].network is True
    # The hash this spec had before the field existed (computed with that code): stored runs still pair.
    assert plain.spec_hash() == "3d3e9d6c119fc1473ae4612ba63c4b3b0006abcf912d0121fabbd647b1d0ba7d"
    assert asking.spec_hash() != plain.spec_hash()
