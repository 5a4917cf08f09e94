"""components/monitoring: the Grafana dashboards and the PrometheusRule hold together.

- every rule and every dashboard query parses as PromQL (Prometheus' own parser: `promtool check
  rules`), and the rules file of the rendered PrometheusRule passes `promtool check rules`;
- the alerts fire, and stay quiet, on the series they are meant for (`promtool test rules`);
- every metric a query names is one the code exports (read from the metric objects of the modules of
  facade/ and services/ and from prometheus_client's registry, never from a hand-kept list), with
  labels those metrics carry or Prometheus adds;
- every alert says what it means and links its section of docs/runbooks.md (under the project's
  repository's address as shipped, and under an overlay's own once the replacement that
  docs/runbooks.md documents is applied), and every section belongs to an alert;
- the dashboards are valid JSON with unique panel ids, a Prometheus `datasource` variable every query
  uses, and a `model` variable where they filter by model; they are shipped as ConfigMaps for
  Grafana's sidecar.

promtool comes from Debian's `prometheus` package (`make test` and `make k8s-check` install it when
it is missing): without it these tests fail, never skip.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.render import K8S_DIR, KUBERNETES_VERSIONS, ROOT, kubectl, render, validate

COMPONENT = K8S_DIR / "components" / "monitoring"
DASHBOARDS = sorted((COMPONENT / "dashboards").glob("*.json"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
# Where the code defines its metrics; Triton's python-backend models (model_repository/) export theirs
# through Triton's own registry, on Triton's port, and are not imported here.
METRIC_PACKAGES = ("facade", "services")
# Labels Prometheus and the Prometheus Operator add to every scraped series (servicemonitor.yaml
# keeps the metrics' own `endpoint`), and those of histogram buckets
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}
SERIES_LABELS = {"le", "quantile"}
# Grafana's variables, as a query would read once Grafana has substituted them
GRAFANA_VALUES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "namespace": "hubmesh", "model": ".+"}
# runbook_url as shipped: this base, "#", the alert's anchor (docs/runbooks.md, "Where the alerts link")
RUNBOOKS_URL = "https://github.com/hubmesh/hubmesh/blob/main/docs/runbooks.md"


# --- the tool ---------------------------------------------------------------------------------------


@functools.cache
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs Debian's prometheus package (target promtool)"
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_is_installed():
    result = subprocess.run([promtool(), "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0 and "promtool" in result.stdout + result.stderr


# --- what the code exports ---------------------------------------------------------------------------


def _metric_modules() -> list[str]:
    """Modules of facade/ and services/ that make prometheus_client metrics."""
    found = []
    for package in METRIC_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "model_repository" in path.parts:
                continue
            text = path.read_text(encoding="utf-8")
            if "prometheus_client" in text and re.search(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(", text):
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


# sample-name suffixes of each metric type, as prometheus_client exposes them
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


@functools.cache
def exported() -> dict[str, frozenset[str]]:
    """Every series name the façade and the services expose -> its label names."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    names: dict[str, set[str]] = {}

    def add(families, labels=()) -> None:
        for family in families:
            for suffix in _SUFFIXES[family.type]:
                names.setdefault(family.name + suffix, set()).update(labels)

    for name in _metric_modules():
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, MetricWrapperBase):  # a metric the module made, wherever it is registered
                add(value.describe(), getattr(value, "_labelnames", ()))
    # the default registry: the same metrics, and the process and platform collectors that
    # generate_latest() (the façade) and start_http_server() (the services) expose with them
    add(REGISTRY.collect())
    return {name: frozenset(labels) for name, labels in names.items()}


def test_the_exported_metrics_are_found():
    metrics = exported()
    # one of each kind, from each place the code defines them
    for name in ("hubmesh_requests_total", "hubmesh_time_to_first_token_seconds_bucket", "hubmesh_requests_in_flight",
                 "hubmesh_replica_quarantined", "hubmesh_text_migrations_total", "hubmesh_subject_tokens_total",
                 "hubmesh_limiter_redis_failures_total", "hubmesh_usage_records_dropped_total",
                 "hubmesh_asyncio_tasks", "process_cpu_seconds_total", "hubmesh_requests_refused_total",
                 "hubmesh_dependency_up", "hubmesh_dependency_last_success_timestamp_seconds",
                 "hubmesh_budget_tokens_per_day"):
        assert name in metrics, name
    assert metrics["hubmesh_requests_total"] == {"endpoint", "model", "status"}
    assert metrics["hubmesh_requests_refused_total"] == {"endpoint", "model", "reason"}
    assert metrics["hubmesh_dependency_up"] == {"dependency"}
    assert "hubmesh_requests" not in metrics  # a counter is exposed with _total only


# --- PromQL: the names a query uses --------------------------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      | (?P<matchers>\{[^{}]*\})
      | (?P<range>\[[^\]]*\])
      | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:ms|[smhdwy])?)
      | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
      | (?P<space>\s+)
      | (?P<paren>[()])
      | (?P<other>[,+\-*/%^=!<>~@]+)""",
    re.VERBOSE,
)
_MATCHER = re.compile(r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)\s*,?""")


def substitute(expr: str) -> str:
    """A dashboard query as Grafana sends it: its variables replaced (an unknown one is an error)."""
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VALUES, f"unknown variable ${name} in {expr!r}"
        return GRAFANA_VALUES[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def _matchers(block: str) -> dict[str, str]:
    inner, found, at = block[1:-1], {}, 0
    while at < len(inner.strip()):
        match = _MATCHER.match(inner, at)
        assert match, f"cannot read the matchers {block!r}"
        found[match.group(1)] = match.group(3)[1:-1]
        at = match.end()
    return found


def selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The series selectors of a PromQL expression, (metric name, label names matched), and the label
    names its groupings (by, without, on, ignoring, group_left/right) use."""
    tokens = []
    for match in _TOKEN.finditer(expr):
        kind = match.lastgroup
        if kind != "space":
            tokens.append((kind, match.group()))
    found, grouped, i = [], set(), 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in _GROUPING:
            i += 1
            if following[1] == "(":  # a label list: names up to the closing parenthesis
                i += 1
                while i < len(tokens) and tokens[i][1] != ")":
                    if tokens[i][0] == "ident":
                        grouped.add(tokens[i][1])
                    i += 1
                i += 1
            continue
        if kind == "ident" and (following[1] == "(" or following[1] in ("by", "without")):
            i += 1  # a function, or an aggregation (its label list comes next)
            continue
        if kind == "ident" and text.lower() not in _KEYWORDS:
            labels: dict[str, str] = {}
            if following[0] == "matchers":
                labels = _matchers(following[1])
                i += 1
            found.append((text, set(labels)))
        elif kind == "matchers":  # {__name__="..."} with no name before it
            labels = _matchers(text)
            assert "__name__" in labels, f"a selector without a metric name in {expr!r}"
            found.append((labels.pop("__name__"), set(labels)))
        i += 1
    return found, grouped


def test_the_selector_reader_reads_promql():
    names, grouped = selectors(
        'sum by (model, le) (rate(hubmesh_ttft_bucket{job="facade", model=~".+"}[5m])) / on () group_left ()'
        ' (hubmesh:config > 0) and {__name__="vllm:num_requests_waiting", pod!=""} offset 5m or vector(0) * 1e3'
    )
    assert names == [("hubmesh_ttft_bucket", {"job", "model"}), ("hubmesh:config", set()),
                     ("vllm:num_requests_waiting", {"pod"})]
    assert grouped == {"model", "le"}


# --- the rules -----------------------------------------------------------------------------------------------


@functools.cache
def _rule_object() -> dict:
    rules = [o for o in render("gpu") if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1, "overlays/gpu renders the component's one PrometheusRule"
    return rules[0]


def rule_groups() -> list[dict]:
    return copy.deepcopy(_rule_object()["spec"]["groups"])


def all_rules() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in all_rules() if "alert" in rule]


def recorded() -> dict[str, dict]:
    """Series the recording rules make -> their rule."""
    return {rule["record"]: rule for rule in all_rules() if "record" in rule}


def write_rules(directory: Path, groups: list[dict], name: str = "rules.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_the_rules_pass_promtool_check_rules(tmp_path):
    path = write_rules(tmp_path, rule_groups())
    result = run_promtool("check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_promtool_check_rules_bites(tmp_path):
    groups = rule_groups()
    groups[-1]["rules"][0]["expr"] = "sum by (namespace (rate(hubmesh_requests_total[5m]))"
    result = run_promtool("check", "rules", write_rules(tmp_path, groups).name, cwd=tmp_path)
    assert result.returncode != 0


def test_the_prometheusrule_is_valid_against_its_crd():
    rule = copy.deepcopy(_rule_object())
    assert validate(rule, KUBERNETES_VERSIONS[0]) == []
    rule["spec"]["groups"][0]["rules"][0]["expression"] = rule["spec"]["groups"][0]["rules"][0].pop("expr")
    assert validate(rule, KUBERNETES_VERSIONS[0])


def test_every_alert_says_what_it_means_and_links_its_runbook():
    anchors = {_anchor(h) for h in re.findall(r"^## (.+)$", RUNBOOKS.read_text(encoding="utf-8"), re.M)}
    linked = set()
    for alert in alerts():
        annotations = alert.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key, "").strip(), f"{alert['alert']}: no {key}"
        assert alert.get("labels", {}).get("severity") in ("critical", "warning", "info"), alert["alert"]
        url = annotations["runbook_url"]
        assert re.fullmatch(r"https://[^#\s]+/docs/runbooks\.md#[a-z0-9-]+", url), url
        base, fragment = url.split("#", 1)
        assert base == RUNBOOKS_URL, url
        assert fragment == _anchor(alert["alert"]), f"{alert['alert']} links #{fragment}"
        assert fragment in anchors, f"docs/runbooks.md has no section for {alert['alert']}"
        linked.add(fragment)
    assert anchors == linked, f"runbook sections no alert links: {sorted(anchors - linked)}"


def _runbooks_snippet() -> str:
    """The kustomization lines docs/runbooks.md tells an overlay to add (its one YAML block)."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", RUNBOOKS.read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) == 1, "docs/runbooks.md shows one yaml block: the runbook URL replacement"
    return blocks[0]


def test_an_overlay_points_the_runbook_urls_at_its_own_copy(tmp_path):
    # the overlay of docs/runbooks.md's "Where the alerts link", over overlays/gpu
    snippet = yaml.safe_load(_runbooks_snippet())
    url = snippet["configMapGenerator"][0]["literals"][0].split("=", 1)[1]
    assert url != RUNBOOKS_URL and url.endswith("/docs/runbooks.md")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S_DIR / "overlays" / "gpu", tmp_path)], **snippet,
    }))
    result = subprocess.run([kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert not [o for o in objects if o["metadata"]["name"] == "hubmesh-runbooks"]  # a source, never applied
    [rule] = [o for o in objects if o["kind"] == "PrometheusRule"]
    shipped = {a["alert"]: a["annotations"]["runbook_url"] for a in alerts()}
    pointed = {r["alert"]: r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]
               if "alert" in r}
    assert pointed == {name: url + "#" + link.split("#", 1)[1] for name, link in shipped.items()}
    # nothing else of the rule changed
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            r.get("annotations", {}).pop("runbook_url", None)
    for group in (shipped_rule := copy.deepcopy(_rule_object()))["spec"]["groups"]:
        for r in group["rules"]:
            r.get("annotations", {}).pop("runbook_url", None)
    assert rule == shipped_rule


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_alerts_cover_what_an_operator_must_hear_of():
    watched = {name: [rule["alert"] for rule in alerts() if name in _expanded(rule["expr"])] for name in (
        "hubmesh_requests_total",  # error ratio
        "hubmesh_time_to_first_token_seconds_bucket",
        "hubmesh_replica_quarantined",
        "hubmesh_replica_ejections_total",
        "hubmesh_text_migrations_total",
        "hubmesh_text_stalls_total",
        "hubmesh_dependency_up",  # Redis and the database, probed
        "hubmesh_limiter_redis_failures_total",  # Redis, as the requests find it
        "hubmesh_usage_records_dropped_total",  # the database
        "hubmesh_subject_tokens_total",  # budgets
        "hubmesh_budget_tokens_per_day",
    )}
    assert all(watched.values()), [name for name, names in watched.items() if not names]


def _expanded(expr: str, depth: int = 0) -> str:
    """An expression with the recorded series it reads replaced by their rules' expressions."""
    assert depth < 5
    rules = recorded()
    for name in {n for n, _ in selectors(expr)[0] if n in rules}:
        expr += " " + _expanded(rules[name]["expr"], depth + 1)
    return expr


# --- every query: parses, and names what is exported ---------------------------------------------------------


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARDS}


def _panels(board: dict) -> list[dict]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # a collapsed row keeps its panels
    return out


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule, dashboard target and label_values() of a dashboard variable."""
    found = [(rule.get("alert") or rule["record"], str(rule["expr"])) for rule in all_rules()]
    for name, board in dashboards().items():
        for panel in _panels(board):
            for target in panel.get("targets", []):
                found.append((f"{name} panel {panel['id']} {target['refId']}", substitute(target["expr"])))
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
                assert match, f"{name}: variable {variable['name']}: {query!r}"
                found.append((f"{name} variable {variable['name']}", substitute(match.group(1))))
    return found


def test_there_are_queries():
    where = [w for w, _ in queries()]
    assert len(where) > 60 and len({w.split()[0] for w in where if ".json" in w}) == len(DASHBOARDS) == 3


def test_every_query_parses(tmp_path):
    # Prometheus' own parser, through promtool: each query as the expression of a recording rule
    found = queries()
    rules = [{"record": f"check:query_{i}", "expr": expr} for i, (_, expr) in enumerate(found)]
    result = run_promtool("check", "rules", write_rules(tmp_path, [{"name": "queries", "rules": rules}]).name,
                          cwd=tmp_path)
    assert result.returncode == 0, "\n".join([result.stdout, result.stderr, *(f"{i}: {w}" for i, (w, _) in enumerate(found))])


def test_every_query_names_exported_metrics_and_their_labels():
    metrics = dict(exported())
    rules = recorded()
    # a recorded series carries the labels of what its rule reads (at most)
    for name, rule in rules.items():
        read = selectors(_expanded(rule["expr"]))[0]
        metrics[name] = frozenset(TARGET_LABELS | {label for n, _ in read for label in metrics.get(n, ())})
    problems = []
    for where, expr in queries():
        found, grouped = selectors(expr)
        assert found or "vector(" in expr, f"{where}: no series in {expr!r}"
        known = set(TARGET_LABELS | SERIES_LABELS)
        for name, labels in found:
            if name not in metrics:
                problems.append(f"{where}: {name} is not a metric the code exports")
                continue
            known |= metrics[name]
            unknown = labels - metrics[name] - TARGET_LABELS - SERIES_LABELS
            if unknown:
                problems.append(f"{where}: {name} has no label {sorted(unknown)}")
        if grouped - known:
            problems.append(f"{where}: groups by {sorted(grouped - known)}, which none of its series has")
    assert problems == []


def test_the_name_check_bites():
    found, _ = selectors(substitute('sum(rate(hubmesh_request_total{job="facade"}[$__rate_interval]))'))
    assert [name for name, _ in found if name not in exported()] == ["hubmesh_request_total"]
    found, _ = selectors('hubmesh_replica_quarantined{reason="x"}')
    assert found[0][1] - exported()["hubmesh_replica_quarantined"] - TARGET_LABELS == {"reason"}
    with pytest.raises(AssertionError):
        substitute("rate(hubmesh_tokens_total{model=~\"$modell\"}[5m])")


# --- the alerts on their series: promtool test rules -----------------------------------------------------------

FACADE = 'namespace="hubmesh", job="facade", pod="facade-1"'
TEXT = 'namespace="hubmesh", job="text", pod="text-1"'


def _requests(endpoint: str, status: str, values: str) -> dict:
    return {"series": f'hubmesh_requests_total{{{FACADE}, endpoint="{endpoint}", model="llama", status="{status}"}}',
            "values": values}


def _ttft(seconds_bucket: str, count_per_min: int, minutes: int = 30) -> list[dict]:
    """Cumulative TTFT buckets: `count_per_min` streams a minute, all at or under `seconds_bucket`."""
    buckets = ("0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf")
    out = []
    for le in buckets:
        per = count_per_min if le == "+Inf" or float(le) >= float(seconds_bucket) else 0
        out.append({"series": f'hubmesh_time_to_first_token_seconds_bucket{{{FACADE}, model="llama", le="{le}"}}',
                    "values": f"0+{per}x{minutes}"})
    return out


def _alert(name: str, at: str, series: list[dict], fired: list[dict]) -> dict:
    return {"interval": "1m", "input_series": series,
            "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": fired}]}


def _fired(alert: str, **labels: str) -> dict:
    rule = next(a for a in alerts() if a["alert"] == alert)
    return {"exp_labels": {"severity": rule["labels"]["severity"], **labels}}


def _budget(limit: int, minutes: int, pods: tuple[str, ...] = ("facade-1", "facade-2")) -> list[dict]:
    """Each façade pod's hubmesh_budget_tokens_per_day (HUBMESH_BUDGET_TOKENS_PER_DAY = `limit`)."""
    return [{"series": f'hubmesh_budget_tokens_per_day{{namespace="hubmesh", job="facade", pod="{pod}"}}',
             "values": f"{limit}x{minutes}"} for pod in pods]


def _up(dependency: str, values: str, pod: str = "facade-1") -> dict:
    return {"series": f'hubmesh_dependency_up{{namespace="hubmesh", job="facade", pod="{pod}", '
                      f'dependency="{dependency}"}}', "values": values}


def _subject_tokens(subject: str, per_min: int, minutes: int) -> dict:
    return {"series": f'hubmesh_subject_tokens_total{{{FACADE}, subject="{subject}", kind="completion"}}',
            "values": f"0+{per_min}x{minutes}"}


UNIT_TESTS = {
    "error ratio": [
        _alert("HubmeshHighErrorRatio", "15m", [
            _requests("/v1/chat/completions", "200", "0+60x30"), _requests("/v1/chat/completions", "500", "0+6x30"),
        ], [_fired("HubmeshHighErrorRatio", namespace="hubmesh")]),
        _alert("HubmeshHighErrorRatio", "15m", [  # 1.6 %; and probes' failures are no API errors
            _requests("/v1/chat/completions", "200", "0+60x30"), _requests("/v1/chat/completions", "503", "0+1x30"),
            _requests("/ready", "503", "0+60x30"),
        ], []),
    ],
    "time to first token": [
        _alert("HubmeshHighTimeToFirstToken", "20m", _ttft("10", 60),
               [_fired("HubmeshHighTimeToFirstToken", namespace="hubmesh", model="llama")]),
        _alert("HubmeshHighTimeToFirstToken", "20m", _ttft("0.5", 60), []),
    ],
    "quarantined": [
        _alert("HubmeshTritonReplicaQuarantined", "10m", [
            {"series": f'hubmesh_replica_quarantined{{{TEXT}, replica="10.0.0.7:8001"}}', "values": "0 0 1x20"},
        ], [_fired("HubmeshTritonReplicaQuarantined", namespace="hubmesh", job="text", replica="10.0.0.7:8001")]),
        _alert("HubmeshTritonReplicaQuarantined", "10m", [  # a canary readmitted it within 3 minutes
            {"series": f'hubmesh_replica_quarantined{{{TEXT}, replica="10.0.0.7:8001"}}', "values": "0 0 1 1 1 0x20"},
        ], []),
        _alert("HubmeshTritonReplicaQuarantined", "5m", [  # not yet 5 minutes
            {"series": f'hubmesh_replica_quarantined{{{TEXT}, replica="10.0.0.7:8001"}}', "values": "0 0 1x20"},
        ], []),
    ],
    "ejected": [
        _alert("HubmeshTritonReplicaEjected", "12m", [
            {"series": f'hubmesh_replica_ejections_total{{{TEXT}, replica="10.0.0.8:8001"}}', "values": "0 0 1x20"},
            {"series": f'hubmesh_replica_ready{{{TEXT}, replica="10.0.0.8:8001", model="llama"}}', "values": "1 1 0x20"},
        ], [_fired("HubmeshTritonReplicaEjected", namespace="hubmesh", job="text", replica="10.0.0.8:8001")]),
        _alert("HubmeshTritonReplicaEjected", "12m", [  # its probe found it ready again
            {"series": f'hubmesh_replica_ejections_total{{{TEXT}, replica="10.0.0.8:8001"}}', "values": "0 0 1x20"},
            {"series": f'hubmesh_replica_ready{{{TEXT}, replica="10.0.0.8:8001", model="llama"}}',
             "values": "1 1 0 0 1x20"},
        ], []),
        _alert("HubmeshTritonReplicaEjected", "12m", [  # not ready, but never ejected: still loading
            {"series": f'hubmesh_replica_ejections_total{{{TEXT}, replica="10.0.0.8:8001"}}', "values": "0x20"},
            {"series": f'hubmesh_replica_ready{{{TEXT}, replica="10.0.0.8:8001", model="llama"}}', "values": "0x20"},
        ], []),
    ],
    "migrations and stalls": [
        _alert("HubmeshTextMigrationsSpiking", "20m", [
            {"series": f'hubmesh_text_migrations_total{{{TEXT}, model="llama", outcome="moved"}}', "values": "0+3x30"},
        ], [_fired("HubmeshTextMigrationsSpiking", namespace="hubmesh", model="llama")]),
        _alert("HubmeshTextMigrationsSpiking", "20m", [
            {"series": f'hubmesh_text_migrations_total{{{TEXT}, model="llama", outcome="moved"}}', "values": "0+0.5x30"},
        ], []),
        _alert("HubmeshTextStallsSpiking", "20m", [
            {"series": f'hubmesh_text_stalls_total{{{TEXT}, replica="10.0.0.7:8001", phase="inter_token"}}',
             "values": "0+1x30"},
        ], [_fired("HubmeshTextStallsSpiking", namespace="hubmesh", job="text")]),
        _alert("HubmeshTextStallsSpiking", "20m", [
            {"series": f'hubmesh_text_stalls_total{{{TEXT}, replica="10.0.0.7:8001", phase="inter_token"}}',
             "values": "0 1 1 2x30"},
        ], []),
    ],
    "redis and the database": [
        # the probe: Redis stopped answering at minute 2, and the alert waits 2 minutes
        _alert("HubmeshLimiterRedisUnreachable", "6m", [_up("redis", "1 1 0x20"), _up("database", "1x22")],
               [_fired("HubmeshLimiterRedisUnreachable", namespace="hubmesh", pod="facade-1")]),
        _alert("HubmeshLimiterRedisUnreachable", "3m", [_up("redis", "1 1 0x20")], []),  # not 2 minutes yet
        _alert("HubmeshLimiterRedisUnreachable", "10m", [  # up, one pod's blip of a minute; no Redis at all
            _up("redis", "1x20"), _up("redis", "1 1 1 0 1x20", pod="facade-2"), _up("database", "1x20", pod="facade-3"),
        ], []),
        # the second signal: the limiter's failed calls (a pod whose probe does not run)
        _alert("HubmeshLimiterRedisUnreachable", "10m", [
            {"series": f"hubmesh_limiter_redis_failures_total{{{FACADE}}}", "values": "0 0 0+30x20"},
        ], [_fired("HubmeshLimiterRedisUnreachable", namespace="hubmesh", pod="facade-1")]),
        _alert("HubmeshLimiterRedisUnreachable", "30m", [  # an outage that is over
            {"series": f"hubmesh_limiter_redis_failures_total{{{FACADE}}}", "values": "0 30 60 90 120x30"},
            _up("redis", "1 0 0 0 1x30"),
        ], []),
        # the database's probe: down from minute 2, for the alert's 5 minutes
        _alert("HubmeshDatabaseUnavailable", "8m", [_up("database", "1 1 0x20"), _up("redis", "1x20")],
               [_fired("HubmeshDatabaseUnavailable", namespace="hubmesh", pod="facade-1")]),
        _alert("HubmeshDatabaseUnavailable", "6m", [_up("database", "1 1 0x20")], []),  # 4 minutes: not yet
        _alert("HubmeshDatabaseUnavailable", "15m", [  # up; Redis down is no database's
            _up("database", "1x20"), _up("redis", "0x20"), _requests("/v1/usage", "200", "0+1x30"),
        ], []),
        _alert("HubmeshDatabaseUnavailable", "15m", [
            _requests("/v1/usage", "503", "0+2x30"), _requests("/v1/chat/completions", "200", "0+60x30"),
        ], [_fired("HubmeshDatabaseUnavailable", namespace="hubmesh", pod="facade-1")]),
        _alert("HubmeshDatabaseUnavailable", "15m", [  # a 503 of a generation is no database's
            _requests("/v1/responses", "503", "0+2x30"), _requests("/v1/usage", "200", "0+1x30"),
            _up("database", "1x30"),
        ], []),
        _alert("HubmeshUsageRecordsDropped", "5m", [
            {"series": f"hubmesh_usage_records_dropped_total{{{FACADE}}}", "values": "0 0 0 500x10"},
        ], [_fired("HubmeshUsageRecordsDropped", namespace="hubmesh", pod="facade-1")]),
        _alert("HubmeshUsageRecordsDropped", "5m", [
            {"series": f"hubmesh_usage_records_dropped_total{{{FACADE}}}", "values": "0x10"},
        ], []),
    ],
}


def _without_annotations(groups: list[dict]) -> list[dict]:
    """The rules with no annotations: promtool compares them whole, and the expectations here are about
    when alerts fire (test_the_annotations_are_rendered checks what they say)."""
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return groups


def _run_unit_tests(tmp_path: Path, groups: list[dict], tests: list[dict]) -> subprocess.CompletedProcess:
    write_rules(tmp_path, groups)
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests,
    }, sort_keys=False))
    return run_promtool("test", "rules", "tests.yaml", cwd=tmp_path)


@pytest.mark.parametrize("concern", sorted(UNIT_TESTS))
def test_the_alerts_fire_and_stay_quiet(tmp_path, concern):
    result = _run_unit_tests(tmp_path, _without_annotations(rule_groups()), UNIT_TESTS[concern])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_budget_alert_fires_once_the_budget_is_set(tmp_path):
    series = [_subject_tokens("key:alice", 8, 120), _subject_tokens("key:bob", 2, 120),
              _subject_tokens("other", 100, 120)]
    fired = [_fired("HubmeshTokenBudgetNearlySpent", namespace="hubmesh", subject="key:alice")]
    # alice: ~960 tokens of 1000 in the window, bob ~240, "other" (many subjects together) never alerts;
    # every façade pod exports the budget: one alert per subject, not one per pod
    result = _run_unit_tests(tmp_path, _without_annotations(rule_groups()),
                             [_alert("HubmeshTokenBudgetNearlySpent", "2h", series + _budget(1000, 120), fired)])
    assert result.returncode == 0, result.stdout + result.stderr
    # the façade's default budget is 0 (unlimited), and without a façade there is no budget: nothing to alert on
    for budget in (_budget(0, 120), []):
        result = _run_unit_tests(tmp_path, rule_groups(),
                                 [_alert("HubmeshTokenBudgetNearlySpent", "2h", series + budget, [])])
        assert result.returncode == 0, result.stdout + result.stderr
    # another namespace's budget is not this one's
    other = [{"series": 'hubmesh_budget_tokens_per_day{namespace="staging", job="facade", pod="facade-1"}',
              "values": "1000x120"}]
    result = _run_unit_tests(tmp_path, rule_groups(), [_alert("HubmeshTokenBudgetNearlySpent", "2h", series + other, [])])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_expectation_fails_promtool_test_rules(tmp_path):
    tests = copy.deepcopy(UNIT_TESTS["quarantined"][:1])
    tests[0]["alert_rule_test"][0]["exp_alerts"] = []
    assert _run_unit_tests(tmp_path, _without_annotations(rule_groups()), tests).returncode != 0


def test_the_annotations_are_rendered(tmp_path):
    fired = _fired("HubmeshTritonReplicaQuarantined", namespace="hubmesh", job="text", replica="10.0.0.7:8001")
    fired["exp_annotations"] = {
        "summary": "Triton replica 10.0.0.7:8001 of text quarantined for 5 minutes",
        "description": "The text service quarantined Triton replica 10.0.0.7:8001 after a stall and no canary "
                       "generation has succeeded there since (hubmesh_replica_quarantined).",
        "runbook_url": RUNBOOKS_URL + "#hubmeshtritonreplicaquarantined",
    }
    test = _alert("HubmeshTritonReplicaQuarantined", "10m", [
        {"series": f'hubmesh_replica_quarantined{{{TEXT}, replica="10.0.0.7:8001"}}', "values": "0 0 1x20"},
    ], [fired])
    result = _run_unit_tests(tmp_path, rule_groups(), [test])
    assert result.returncode == 0, result.stdout + result.stderr


# --- the dashboards -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_a_dashboard_is_valid_and_uses_its_variables(path):
    board = json.loads(path.read_text(encoding="utf-8"))
    assert board["uid"] and len(board["uid"]) <= 40 and board["title"].startswith("hubmesh / ")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    datasource = variables.get("datasource")
    assert datasource and datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    panels = _panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    expressions = []
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("title") and panel.get("targets"), panel.get("id")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}", panel["title"]
            expressions.append(target["expr"])
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]
    used = {m.group(1) or m.group(2) for e in expressions for m in re.finditer(r"\$\{(\w+)\}|\$(\w+)", e)}
    assert used - set(GRAFANA_VALUES) == set()
    # the variables a board defines are the ones its queries use (namespace everywhere; model where
    # a query filters by model), and a query that could filter by model does
    assert {"namespace", "model"} & used == {"namespace", "model"} & (set(variables) - {"datasource"})
    assert "namespace" in variables
    if "model" in variables:
        assert variables["model"]["multi"] and variables["model"]["includeAll"]
        assert all("=~" in m.group() for e in expressions for m in re.finditer(r'model\s*[=!]~?\s*"\$model"', e))
    # no two panels on the same spot of the grid
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"panel {panel['id']} overlaps another"
        taken |= cells


def test_the_dashboards_cover_their_concerns():
    def metrics_of(name: str) -> set[str]:
        board = dashboards()[name]
        return {n for p in _panels(board) for t in p.get("targets", [])
                for n, _ in selectors(_expanded(substitute(t["expr"])))[0]}
    traffic, routing, limits = (metrics_of(f"hubmesh-{n}.json") for n in ("traffic", "routing", "limits"))
    assert {"hubmesh_time_to_first_token_seconds_bucket", "hubmesh_inter_token_latency_seconds_bucket",
            "hubmesh_request_duration_seconds_bucket", "hubmesh_requests_total", "hubmesh_tokens_total"} <= traffic
    assert {"hubmesh_route_decisions_total", "hubmesh_route_prefix_match_ratio_bucket", "hubmesh_replica_ready",
            "hubmesh_replica_quarantined", "hubmesh_replica_ejections_total", "hubmesh_replica_in_flight",
            "hubmesh_text_migrations_total", "hubmesh_text_stalls_total", "hubmesh_replica_canaries_total"} <= routing
    assert {"hubmesh_requests_total", "hubmesh_requests_refused_total", "hubmesh_subject_tokens_total",
            "hubmesh_budget_tokens_per_day", "hubmesh_limiter_redis_failures_total", "hubmesh_dependency_up",
            "hubmesh_dependency_last_success_timestamp_seconds", "hubmesh_usage_records_dropped_total"} <= limits
    # the configured budget is the façade's gauge, no longer a constant kept in a recording rule
    assert not [name for name in recorded() if "config" in name]


def test_the_dashboards_are_configmaps_for_grafanas_sidecar():
    maps = {o["metadata"]["name"]: o for o in render("gpu") if o["kind"] == "ConfigMap"
            and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"}
    assert {name for m in maps.values() for name in m["data"]} == {p.name for p in DASHBOARDS}
    for config_map in maps.values():
        assert config_map["metadata"]["name"].startswith("grafana-dashboard-")  # no hash suffix to pile up
        for name, text in config_map["data"].items():
            assert json.loads(text) == json.loads((COMPONENT / "dashboards" / name).read_text(encoding="utf-8"))
    uids = [json.loads(text)["uid"] for m in maps.values() for text in m["data"].values()]
    assert len(uids) == len(set(uids))


def test_the_servicemonitors_keep_the_metrics_endpoint_label():
    # The operator's `endpoint` target label (the port's name) would push the metrics' own aside as
    # exported_endpoint; every query above reads `endpoint` as the route or gRPC method.
    for monitor in (o for o in render("gpu") if o["kind"] == "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            relabel = endpoint.get("metricRelabelings", [])
            assert {"sourceLabels": ["exported_endpoint"], "regex": "(.+)", "targetLabel": "endpoint"} in relabel
            assert {"regex": "exported_endpoint", "action": "labeldrop"} in relabel
