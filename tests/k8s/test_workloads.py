"""Policies every workload meets: resources, probes, non-root security, scaling and disruption
budgets that match their Deployment, Services that reach the right pods on the right ports."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import (
    GRPC_PORTS,
    MODALITIES,
    REDIS_PORT,
    SINGLETONS,
    TRITON_PORTS,
    all_containers,
    quantity,
    selects,
    selects_map,
)

APP_DEPLOYMENTS = ("facade", *MODALITIES)
TRITON_DEPLOYMENTS = tuple(f"triton-{m}" for m in MODALITIES)


def test_the_expected_deployments_exist(manifests):
    assert sorted(d.name for d in manifests.deployments) == sorted(APP_DEPLOYMENTS + TRITON_DEPLOYMENTS + SINGLETONS)


# -- resources -----------------------------------------------------------------------------------


def test_every_container_has_cpu_and_memory_requests_and_limits(manifests):
    for workload in manifests.workloads:
        for _, c in all_containers(workload):
            where = f"{workload.name}/{c['name']}"
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            for resource in ("cpu", "memory"):
                assert resource in requests and resource in limits, f"{where}: {resource}"
                assert quantity(requests[resource]) <= quantity(limits[resource]), f"{where}: {resource}"
            if "nvidia.com/gpu" in limits or "nvidia.com/gpu" in requests:
                assert requests.get("nvidia.com/gpu") == limits.get("nvidia.com/gpu"), where


def test_memory_backed_volumes_fit_in_the_memory_limit(manifests):
    for workload in manifests.workloads:
        for _, c in all_containers(workload):
            limit = quantity(c["resources"]["limits"]["memory"])
            for mount in c.get("volumeMounts", []):
                volume = workload.volume(mount["name"])
                empty_dir = volume.get("emptyDir")
                if empty_dir is not None:
                    assert "sizeLimit" in empty_dir, f"{workload.name}: emptyDir {volume['name']} unbounded"
                    if empty_dir.get("medium") == "Memory":
                        assert quantity(empty_dir["sizeLimit"]) <= limit / 2, f"{workload.name}: {volume['name']}"


# -- probes --------------------------------------------------------------------------------------


def test_every_long_running_container_has_liveness_and_readiness_probes(manifests):
    for deployment in manifests.deployments:
        for c in deployment.containers:
            assert "livenessProbe" in c and "readinessProbe" in c, f"{deployment.name}/{c['name']}"


def test_init_containers_have_no_probes(manifests):
    for workload in manifests.workloads:
        for c in workload.init_containers:
            assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(c), c["name"]


def test_probe_ports_are_container_ports(manifests):
    for deployment in manifests.deployments:
        for c in deployment.containers:
            names = {p["name"] for p in c["ports"]}
            numbers = {p["containerPort"] for p in c["ports"]}
            for probe_kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = c.get(probe_kind)
                if probe is None:
                    continue
                (handler,) = [probe[k] for k in ("httpGet", "grpc", "tcpSocket", "exec") if k in probe]
                if "port" in handler:
                    assert handler["port"] in names | numbers, f"{deployment.name} {probe_kind}: {handler}"


# -- security ------------------------------------------------------------------------------------


def test_pods_run_as_non_root_with_runtime_default_seccomp(manifests):
    for workload in manifests.workloads:
        ctx = workload.pod_spec["securityContext"]
        assert ctx["runAsNonRoot"] is True, workload.name
        assert isinstance(ctx["runAsUser"], int) and ctx["runAsUser"] > 0, workload.name
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, workload.name
        assert not workload.pod_spec.get("hostNetwork") and not workload.pod_spec.get("hostPID"), workload.name
        assert not any("hostPath" in v for v in workload.pod_spec.get("volumes", [])), workload.name


def test_every_container_is_locked_down(manifests):
    for workload in manifests.workloads:
        for _, c in all_containers(workload):
            where = f"{workload.name}/{c['name']}"
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx.get("privileged", False) is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add"), where
            assert ctx.get("runAsUser", 1) != 0 and ctx.get("runAsNonRoot", True) is True, where


def test_main_containers_have_a_writable_tmp(manifests):
    # read-only root filesystems: Python, Triton and vLLM still need a scratch directory
    for deployment in manifests.deployments:
        for c in deployment.containers:
            volume = deployment.mounted_volume(c, "/tmp")
            assert volume is not None and "emptyDir" in volume, f"{deployment.name}: no writable /tmp"


def test_service_accounts_are_own_and_mount_no_token(manifests):
    accounts = {sa["metadata"]["name"]: sa for sa in manifests.of_kind("ServiceAccount")}
    for sa in accounts.values():
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]
    used = set()
    for workload in manifests.workloads:
        name = workload.pod_spec.get("serviceAccountName")
        assert name and name != "default" and name in accounts, workload.name
        assert workload.pod_spec["automountServiceAccountToken"] is False, workload.name
        used.add(name)
    assert used == set(accounts), "a ServiceAccount nobody uses"


def test_the_namespace_enforces_the_restricted_pod_security_standard(manifests):
    (ns,) = manifests.of_kind("Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_images_are_pinned(manifests):
    for workload in manifests.workloads:
        for _, c in all_containers(workload):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), f"{workload.name}: {image}"


# -- scaling and disruption ----------------------------------------------------------------------


def test_deployment_selectors_pick_their_own_pods_only(manifests):
    for deployment in manifests.deployments:
        selector = deployment.obj["spec"]["selector"]
        assert selects(selector, deployment.pod_labels), deployment.name
        assert [d.name for d in manifests.selected_deployments(selector)] == [deployment.name]


def test_every_deployment_has_one_hpa_that_targets_it(manifests):
    hpas = manifests.of_kind("HorizontalPodAutoscaler")
    scaled = [d for d in manifests.deployments if d.name not in SINGLETONS]
    for deployment in manifests.deployments:
        mine = [
            h for h in hpas
            if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment.name}
        ]
        if deployment.name in SINGLETONS:
            # exactly one pod, never two at once (not even during a rollout), and nothing that scales it
            assert not mine, f"{deployment.name}: a singleton with an HPA"
            assert deployment.obj["spec"]["replicas"] == 1, deployment.name
            assert deployment.obj["spec"]["strategy"] == {"type": "Recreate"}, deployment.name
            continue
        assert len(mine) == 1, f"{deployment.name}: {len(mine)} HPAs"
        spec = mine[0]["spec"]
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"], deployment.name
        cpu = [m for m in spec["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
        assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization", deployment.name
        # the HPA owns the replica count: a `replicas` here would reset it on every apply
        assert "replicas" not in deployment.obj["spec"], deployment.name
    assert len(hpas) == len(scaled)


def test_every_deployment_has_one_pdb_that_selects_exactly_its_pods(manifests):
    pdbs = manifests.of_kind("PodDisruptionBudget")
    for deployment in manifests.deployments:
        mine = [p for p in pdbs if selects(p["spec"]["selector"], deployment.pod_labels)]
        assert len(mine) == 1, f"{deployment.name}: {len(mine)} PDBs"
        spec = mine[0]["spec"]
        assert [d.name for d in manifests.selected_deployments(spec["selector"])] == [deployment.name]
        # maxUnavailable >= 1 never blocks a node drain, even at one replica
        assert "minAvailable" not in spec and spec["maxUnavailable"] >= 1, deployment.name
    assert len(pdbs) == len(manifests.deployments)


def test_topology_spread_selects_the_deployments_own_pods(manifests):
    for deployment in manifests.deployments:
        for constraint in deployment.pod_spec.get("topologySpreadConstraints", []):
            assert [d.name for d in manifests.selected_deployments(constraint["labelSelector"])] == [deployment.name]


# -- Services ------------------------------------------------------------------------------------


def test_every_service_selects_one_deployment_and_targets_its_ports(manifests):
    for service in manifests.of_kind("Service"):
        name = service["metadata"]["name"]
        selected = [d for d in manifests.deployments if selects_map(service["spec"]["selector"], d.pod_labels)]
        assert len(selected) == 1, f"Service {name} selects {[d.name for d in selected]}"
        ports = {p["name"]: p["containerPort"] for c in selected[0].containers for p in c["ports"]}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), f"Service {name}: no container port {target}"
            assert ports.get(port["name"]) == port["port"], f"Service {name}: {port['name']} is not {port['port']}"


@pytest.mark.parametrize("modality", MODALITIES)
def test_grpc_services_and_tritons_are_headless(manifests, modality):
    # gRPC keeps one HTTP/2 connection per address: only per-pod addresses let calls spread; and only
    # ready pods' addresses (publishNotReadyAddresses unset or false), so no call goes to a loading pod
    service = manifests.service_for(modality)
    assert service["spec"]["clusterIP"] == "None" and not service["spec"].get("publishNotReadyAddresses")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == GRPC_PORTS[modality]
    triton = manifests.service_for(f"triton-{modality}")
    assert triton["spec"]["clusterIP"] == "None" and not triton["spec"].get("publishNotReadyAddresses")
    assert {p["name"]: p["port"] for p in triton["spec"]["ports"]} == TRITON_PORTS


def test_the_facade_service_balances_per_request(manifests):
    service = manifests.service_for("facade")
    assert service["spec"].get("clusterIP") != "None"
    assert [p["port"] for p in service["spec"]["ports"]] == [8080]


def test_the_limits_redis_is_one_clusterip_service_for_the_facade(manifests):
    # one store, one virtual IP: every façade replica talks to the same Redis
    service = manifests.service_for("redis")
    assert service["metadata"]["name"] == "redis" and service["spec"]["type"] == "ClusterIP"
    assert service["spec"].get("clusterIP") != "None"
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("redis", REDIS_PORT)]
