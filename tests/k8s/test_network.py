"""NetworkPolicies let exactly the mesh's own paths through; the Ingress streams without buffering."""

from __future__ import annotations

from tests.k8s.manifests import (
    FACADE_PORT,
    GRPC_PORTS,
    METRICS_PORT,
    MODALITIES,
    NATS_PORT,
    REDIS_PORT,
    TRITON_PORTS,
    Manifests,
    env_value,
    service_settings,
    url_host,
)
from tests.k8s.render import render

INGRESS_CONTROLLER = "ingress-nginx/ingress-nginx"  # namespace/pod name label
MONITORING = "monitoring/*"


def expected_paths() -> set[tuple[str, str, int]]:
    """(source, destination pod, port): everything that may open a connection to a hubmesh pod."""
    paths = {(INGRESS_CONTROLLER, "facade", FACADE_PORT), (MONITORING, "facade", FACADE_PORT)}  # API; /metrics
    for m in MODALITIES:
        paths.add(("facade", m, GRPC_PORTS[m]))  # each service only from the façade
        paths.add((m, f"triton-{m}", TRITON_PORTS["grpc"]))  # each Triton only from its own service
        paths.add((MONITORING, m, METRICS_PORT))  # Prometheus scrapes
        paths.add((MONITORING, f"triton-{m}", TRITON_PORTS["metrics"]))
    # the text service reads each Triton pod's engine load (vLLM's gauges) for prefix routing
    paths.add(("text", "triton-text", TRITON_PORTS["metrics"]))
    # the limits' counters (HUBMESH_REDIS_URL): only the façade reaches Redis, which has no password
    paths.add(("facade", "redis", REDIS_PORT))
    # the text pods' shared routing view (HUBMESH_TEXT_ROUTING_BUS_URL): only they reach NATS
    paths.add(("text", "nats", NATS_PORT))
    return paths


def _peers(manifests: Manifests, peer: dict) -> list[str]:
    if "ipBlock" in peer:
        return [f"ipBlock:{peer['ipBlock']['cidr']}"]
    pods = peer.get("podSelector")
    if "namespaceSelector" in peer:
        labels = peer["namespaceSelector"].get("matchLabels", {})
        assert set(labels) == {"kubernetes.io/metadata.name"}, f"namespace selected by name only: {peer}"
        namespace = labels["kubernetes.io/metadata.name"]
        if not pods:
            return [f"{namespace}/*"]
        assert set(pods) == {"matchLabels"} and set(pods["matchLabels"]) == {"app.kubernetes.io/name"}, peer
        return [f"{namespace}/{pods['matchLabels']['app.kubernetes.io/name']}"]
    return [d.name for d in manifests.selected_deployments(pods)]  # same namespace


def allowed_paths(manifests: Manifests) -> set[tuple[str, str, int | str]]:
    """Every (source, destination, port) some ingress rule admits, read from the policies."""
    paths = set()
    for policy in manifests.of_kind("NetworkPolicy"):
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"], policy["metadata"]["name"]
        targets = [d.name for d in manifests.selected_deployments(spec["podSelector"])]
        for rule in spec.get("ingress", []):
            sources = [s for peer in rule.get("from", [{"ipBlock": {"cidr": "0.0.0.0/0"}}]) for s in _peers(manifests, peer)]
            ports = [p["port"] for p in rule.get("ports", [{"port": "*"}])]
            paths |= {(s, t, p) for s in sources for t in targets for p in ports}
    return paths


def test_everything_is_denied_unless_a_policy_allows_it(manifests):
    deny = [
        p for p in manifests.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")
    ]
    assert len(deny) == 1


def test_policies_allow_exactly_the_mesh_paths(manifests):
    assert allowed_paths(manifests) == expected_paths()


def test_only_services_that_scrape_their_tritons_reach_the_triton_metrics_ports(manifests):
    allowed = allowed_paths(manifests)
    for m in MODALITIES:
        settings = service_settings(manifests, m)
        scrapes = bool(settings.replica_options().get("scrape")) and settings.triton_metrics_port > 0
        assert ((m, f"triton-{m}", settings.triton_metrics_port) in allowed) == scrapes, m
    assert service_settings(manifests, "text").replica_options()["scrape"]  # prefix routing reads the engines' load


def test_the_evaluation_notices_a_wider_policy():
    manifests = Manifests(render("cpu"))
    policy = next(p for p in manifests.of_kind("NetworkPolicy") if p["metadata"]["name"] == "triton-text")
    policy["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "facade"}}})
    assert ("facade", "triton-text", 8001) in allowed_paths(manifests) - expected_paths()


def test_policy_ports_are_ports_the_pods_listen_on(manifests):
    for policy in manifests.of_kind("NetworkPolicy"):
        for target in manifests.selected_deployments(policy["spec"]["podSelector"]):
            listening = {p["containerPort"] for c in target.containers for p in c["ports"]}
            for rule in policy["spec"].get("ingress", []):
                for port in rule["ports"]:
                    assert port["port"] in listening, f"{policy['metadata']['name']}: {target.name} has no port {port}"


# -- Ingress -------------------------------------------------------------------------------------


def test_the_ingress_streams_sse_unbuffered_for_an_hour(manifests):
    (ingress,) = manifests.of_kind("Ingress")
    notes = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    # HUBMESH_MAX_BODY_BYTES defaults to 8 MiB: nginx must not refuse smaller bodies first
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "8m"


def _routed(rule: dict, path: str) -> bool:
    for entry in rule["http"]["paths"]:
        prefix = entry["path"].rstrip("/")
        if entry["pathType"] == "Exact" and path == entry["path"]:
            return True
        if entry["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/")):
            return True
    return False


def test_the_ingress_routes_the_api_and_keeps_unauthenticated_endpoints_inside(manifests):
    (ingress,) = manifests.of_kind("Ingress")
    (rule,) = ingress["spec"]["rules"]
    for path in ("/v1/chat/completions", "/v1/models", "/v1/images/files/abc123", "/openapi.json", "/v1/messages",
                 "/v1/keys", "/auth/v1/tokens/generate"):
        assert _routed(rule, path), path
    for path in ("/metrics", "/health", "/ready", "/", "/v1x"):
        assert not _routed(rule, path), path
    # every route the façade serves is either routed or one of those kept inside
    from facade.routes import ROUTES

    routes = [route.path for route in ROUTES]
    assert routes and all(_routed(rule, r) or r in ("/metrics", "/health", "/ready") for r in routes), routes


def test_the_ingress_reaches_the_facade_and_agrees_with_its_public_url(manifests):
    (ingress,) = manifests.of_kind("Ingress")
    (rule,) = ingress["spec"]["rules"]
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["name"] == manifests.service_for("facade")["metadata"]["name"]
        assert backend["port"]["name"] in {p["name"] for p in manifests.service_for("facade")["spec"]["ports"]}
    facade = manifests.deployment("facade").container()
    public_url = env_value(facade, "HUBMESH_PUBLIC_URL")
    assert url_host(public_url) == rule["host"]
    tls_hosts = [h for t in ingress["spec"].get("tls", []) for h in t["hosts"]]
    assert public_url.startswith("https://") == (rule["host"] in tls_hosts)
