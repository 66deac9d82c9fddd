"""What the pattern routes return and accept."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

RuleName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL bytes")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (a lone surrogate is not)") from None
    return text


Text = Annotated[str, AfterValidator(_no_nul)]


class ExampleAttempt(BaseModel):
    attempt_id: int
    run_id: int
    phase_id: int
    number: int
    line: str
    """The failure's signature line, unmasked."""


class Candidate(BaseModel):
    pattern: str
    """An RE2 regex drawn from the template (not yet measured: `POST /failures/rules/measure`)."""
    advice: str
    """A draft: the Doctor's most common advice for the cluster, else a placeholder to edit."""


class Cluster(BaseModel):
    rank: int
    template: str
    occurrences: int
    distinct_runs: int
    score: int
    """occurrences x distinct runs, what clusters are ranked by."""
    examples: list[ExampleAttempt]
    doctor_action: str | None
    """The Doctor's most common action for the cluster's attempts (None: never asked)."""
    doctor_diagnosis: str | None
    """The Doctor's most common diagnosis for the cluster's attempts."""
    doctor_calls: int
    doctor_tokens: int
    """Input + output tokens of the Doctor calls on the cluster's attempts (usage rows, role doctor)."""
    candidate: Candidate


class PatternReport(BaseModel):
    scanned: int
    """Unexplained failed attempts mined (newest first, at most `window`)."""
    clusters: list[Cluster]


class RuleDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pattern: Annotated[Text, Field(min_length=1, max_length=300)]
    """RE2 syntax; searched line by line in the failure output."""
    window: Annotated[int, Field(ge=1, le=20000)] = 2000


class RuleIn(RuleDraft):
    name: RuleName
    advice: Annotated[Text, Field(min_length=1, max_length=4000)]
    template: Annotated[Text | None, Field(max_length=4000)] = None


class Measurement(BaseModel):
    failed_scanned: int
    failed_hits: int
    """Failed attempts whose logs the rule matches."""
    unexplained_hits: int
    """Of those, attempts no rule explained: the ones it would newly catch."""
    hit_runs: int
    successful_scanned: int
    false_hits: int
    """Successful attempts whose logs the rule matches: a rule should not fire on a success's logs."""
    doctor_calls_saved: int
    doctor_tokens_saved: int
    """Input + output tokens the Doctor spent on the unexplained hits."""
    example_attempt_ids: list[int]


class RuleOut(BaseModel):
    id: int
    name: str
    pattern: str
    advice: str
    version: int
    template: str | None
    measurement: Measurement | None
    created_by: str | None
    created_at: datetime
    retired_at: datetime | None
    hits: int
    """Attempts this rule explained (their `mitigation` names it)."""


class RuleSetOut(BaseModel):
    version: int
    rules: list[RuleOut]
