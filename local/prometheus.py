"""Reading a Prometheus endpoint: the one parser (prometheus_client's) for the launcher, the tests
and the benchmarks."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse(response.read().decode())


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every sample named `name` that has these label values."""
    wanted = labels.items()
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= set(have))


def metric_sum(url: str, name: str, **labels: str) -> float:
    """Sum of every sample of metric `name` (with these label values) on a Prometheus endpoint."""
    return total(scrape(url), name, **labels)
