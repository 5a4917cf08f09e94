"""Per-subject Prometheus counters, made from the same record as the usage ledger's
(facade/observability.py): hubmesh_subject_requests_total{subject} and
hubmesh_subject_tokens_total{subject, kind} (kind: prompt, completion, cached).

The label set is bounded: the first `limit` distinct subjects this process sees
(HUBMESH_USAGE_METRIC_SUBJECTS) get a label value of their own, every later one is counted under
subject="other" (subjects are `jwt:...` or `key:...`, so no subject is named "other"). Requests of
no subject (a refused credential) are not per-subject: hubmesh_requests_total counts them. Exact
per-subject totals are the ledger's (GET /v1/usage).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter

from facade.store.usage import UsageRecord, storable

OTHER = "other"
DEFAULT_SUBJECTS = 50

SUBJECT_REQUESTS = Counter(
    "hubmesh_subject_requests", "Requests per subject (the first subjects seen; later ones as subject=\"other\")",
    ["subject"],
)
SUBJECT_TOKENS = Counter(
    "hubmesh_subject_tokens", "Tokens per subject and kind (prompt, completion, cached; later subjects as "
    "subject=\"other\")", ["subject", "kind"],
)


class SubjectMetrics:
    """Counts records per subject, under at most `limit` subject label values plus "other"."""

    def __init__(self, limit: int = DEFAULT_SUBJECTS) -> None:
        self.limit = limit
        self._labelled: set[str] = set()

    def label(self, subject: str) -> str:
        """The subject's label value: its own (storable: valid UTF-8) while there is room, else "other"."""
        if subject in self._labelled:
            return subject
        if len(self._labelled) < self.limit:
            self._labelled.add(subject)
            return subject
        return OTHER

    def count(self, record: UsageRecord) -> None:
        if not record.subject:
            return
        label = self.label(storable(record.subject))
        SUBJECT_REQUESTS.labels(label).inc()
        for kind, tokens in (("prompt", record.prompt_tokens), ("completion", record.completion_tokens),
                             ("cached", record.cached_tokens)):
            if tokens:
                SUBJECT_TOKENS.labels(label, kind).inc(tokens)


SUBJECT_METRICS = web.AppKey("subject_metrics", SubjectMetrics)
