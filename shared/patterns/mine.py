"""Mining unexplained failures into ranked templates with Drain (`drain3-improved`).

Each unexplained failed attempt gives one signature line (`signature.py`), masked (`masking.py`) and fed
to a fresh Drain tree (similarity 0.4, depth 4: Drain3's defaults). A cluster's template is read once every
line has been learnt, so early members see the final, most general template too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from drain3 import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig
from sqlalchemy.orm import Session

from shared.patterns.history import LoggedAttempt, attempts, doctor_spend
from shared.patterns.masking import mask
from shared.patterns.regex import template_regex
from shared.patterns.schemas import Candidate, Cluster, ExampleAttempt, PatternReport
from shared.patterns.signature import signature

SIMILARITY = 0.4
DEPTH = 4
EXAMPLES = 3
ADVICE_PLACEHOLDER = "Describe what the next attempt must do differently when this failure appears."


@dataclass
class _Group:
    members: list[tuple[LoggedAttempt, str]] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return len({a.run_id for a, _ in self.members})


def _miner() -> TemplateMiner:
    config = TemplateMinerConfig()
    config.drain_sim_th = SIMILARITY
    config.drain_depth = DEPTH
    config.profiling_enabled = False
    return TemplateMiner(config=config)


def group(failures: Sequence[LoggedAttempt]) -> tuple[dict[int, _Group], dict[int, str]]:
    """Attempts grouped by Drain cluster id, and each cluster's final template."""
    miner = _miner()
    groups: dict[int, _Group] = {}
    for attempt in failures:
        line = signature(attempt.failure_reason, attempt.validation_output)
        if not line:
            continue
        result = miner.add_log_message(mask(line))
        groups.setdefault(int(result["cluster_id"]), _Group()).members.append((attempt, line))
    templates = {c.cluster_id: c.get_template() for c in miner.drain.clusters}
    return groups, templates


def mine(session: Session, *, window: int = 2000, limit: int = 20, min_occurrences: int = 2) -> PatternReport:
    """The unexplained failures of the newest `window` failed attempts, as ranked clusters."""
    failures = [a for a in attempts(session, failed=True, window=window) if not a.explained]
    groups, templates = group(failures)
    spend = doctor_spend(session, ((a.phase_id, a.number) for a in failures))
    ranked = sorted(
        (g for g in groups.values() if len(g.members) >= min_occurrences),
        key=lambda g: (-len(g.members) * g.runs, -len(g.members)),
    )
    ids = {id(g): cid for cid, g in groups.items()}
    clusters = [
        _cluster(rank, templates[ids[id(g)]], g, spend) for rank, g in enumerate(ranked[:limit], start=1)
    ]
    return PatternReport(scanned=len(failures), clusters=clusters)


def _cluster(
    rank: int, template: str, group: _Group, spend: dict[tuple[int, int], tuple[int, int]]
) -> Cluster:
    doctors = [a.doctor for a, _ in group.members if a.doctor and a.doctor.get("action")]
    actions = Counter(str(d["action"]) for d in doctors)
    advices = Counter(str(d["advice"]) for d in doctors if d.get("advice"))
    diagnoses = Counter(str(d["diagnosis"]) for d in doctors if d.get("diagnosis"))
    used = [spend[(a.phase_id, a.number)] for a, _ in group.members if (a.phase_id, a.number) in spend]
    examples = [
        ExampleAttempt(attempt_id=a.id, run_id=a.run_id, phase_id=a.phase_id, number=a.number, line=line)
        for a, line in group.members[:EXAMPLES]
    ]
    advice = advices.most_common(1)[0][0] if advices else ADVICE_PLACEHOLDER
    occurrences = len(group.members)
    return Cluster(
        rank=rank,
        template=template,
        occurrences=occurrences,
        distinct_runs=group.runs,
        score=occurrences * group.runs,
        examples=examples,
        doctor_action=actions.most_common(1)[0][0] if actions else None,
        doctor_diagnosis=diagnoses.most_common(1)[0][0][:2000] if diagnoses else None,
        doctor_calls=sum(calls for _, calls in used),
        doctor_tokens=sum(tokens for tokens, _ in used),
        candidate=Candidate(pattern=template_regex(template), advice=advice[:4000]),
    )
