"""Reading rendered manifests: objects by kind and name, pods, containers, selectors, quantities."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from importlib import import_module
from urllib.parse import urlsplit

MODALITIES = ("text", "embeddings", "images")
# gRPC port and health-checked service name of each modality's service
GRPC_PORTS = {"text": 50051, "embeddings": 50052, "images": 50053}
GRPC_SERVICES = {
    "text": "hubmesh.text.v1.TextGeneration",
    "embeddings": "hubmesh.embeddings.v1.Embeddings",
    "images": "hubmesh.images.v1.Images",
}
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
METRICS_PORT = 9464
FACADE_PORT = 8080
REDIS_PORT = 6379
# The official image of the façade's limit counters (base/redis) and its own non-root user
REDIS_IMAGE = "redis:7-alpine"
REDIS_UID = 999
# Deployments that must never run more than one pod (no HorizontalPodAutoscaler, `replicas: 1`):
# a second Redis behind its Service would split every subject's counters between two stores.
# The text pods' routing bus (base/nats): one server, or the pods would split into two views.
SINGLETONS = ("redis", "nats")
NATS_PORT = 4222
NATS_IMAGE = "nats:2.10-alpine"
WORKLOAD_KINDS = ("Deployment", "Job")


@dataclass(frozen=True)
class Workload:
    """A Deployment or Job and its pod template."""

    obj: dict

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def pod(self) -> dict:
        return self.obj["spec"]["template"]

    @property
    def pod_labels(self) -> dict:
        return self.pod["metadata"].get("labels", {})

    @property
    def pod_spec(self) -> dict:
        return self.pod["spec"]

    @property
    def containers(self) -> list[dict]:
        return self.pod_spec["containers"]

    @property
    def init_containers(self) -> list[dict]:
        return self.pod_spec.get("initContainers", [])

    def container(self, name: str | None = None) -> dict:
        """The container called `name`, or the only one."""
        if name is None:
            (only,) = self.containers
            return only
        (found,) = [c for c in self.containers if c["name"] == name]
        return found

    def volume(self, name: str) -> dict:
        (found,) = [v for v in self.pod_spec.get("volumes", []) if v["name"] == name]
        return found

    def mounted_volume(self, container: dict, path: str) -> dict | None:
        """The volume mounted at `path` in `container`, or None."""
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] == path:
                return self.volume(mount["name"])
        return None

    def port(self, name: str) -> int:
        """containerPort of the port called `name` (over all containers)."""
        ports = [p["containerPort"] for c in self.containers for p in c.get("ports", []) if p.get("name") == name]
        (port,) = ports
        return port


class Manifests:
    """The objects of one rendered overlay."""

    def __init__(self, objects: list[dict]) -> None:
        self.objects = objects

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(o["metadata"]["name"] == name for o in self.of_kind(kind))

    @property
    def deployments(self) -> list[Workload]:
        return [Workload(o) for o in self.of_kind("Deployment")]

    @property
    def workloads(self) -> list[Workload]:
        return [Workload(o) for o in self.objects if o["kind"] in WORKLOAD_KINDS]

    def deployment(self, name: str) -> Workload:
        return Workload(self.get("Deployment", name))

    @property
    def namespace(self) -> str:
        (ns,) = self.of_kind("Namespace")
        return ns["metadata"]["name"]

    def selected_deployments(self, selector: Mapping) -> list[Workload]:
        return [d for d in self.deployments if selects(selector, d.pod_labels)]

    def service_for(self, deployment: str) -> dict:
        """The one Service whose selector picks the pods of `deployment`."""
        found = [s for s in self.of_kind("Service") if selects_map(s["spec"].get("selector", {}), self.deployment(deployment).pod_labels)]
        assert len(found) == 1, f"expected one Service for {deployment}, found {[s['metadata']['name'] for s in found]}"
        return found[0]


def selects_map(match_labels: Mapping, labels: Mapping) -> bool:
    """A Service-style selector (plain map); an empty one selects nothing."""
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def selects(selector: Mapping | None, labels: Mapping) -> bool:
    """A LabelSelector (matchLabels + matchExpressions); an empty selector selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def env(container: dict) -> dict[str, dict]:
    """Env entries of a container by name (each the whole entry: value or valueFrom)."""
    entries = container.get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"{container['name']}: duplicate env names {names}"
    return {e["name"]: e for e in entries}


def env_value(container: dict, name: str) -> str:
    entry = env(container).get(name)
    assert entry is not None, f"{container['name']}: env {name} not set"
    assert "value" in entry, f"{container['name']}: env {name} is not a plain value"
    return entry["value"]


def plain_env(container: dict) -> dict[str, str]:
    """The env entries with a plain value, as the process sees them (valueFrom ones left out:
    secrets and the downward API, which no manifest test can know)."""
    return {name: entry["value"] for name, entry in env(container).items() if "value" in entry}


def effective_env(manifests: Manifests, container: dict, secret_data: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the kubelet gives a container (makeEnvironmentVariables, kubelet_pods.go):
    the envFrom ConfigMaps first (an optional one that does not exist adds nothing), then `env`,
    whose entries replace them. A secretKeyRef is read from `secret_data` (the keys its Secret is
    assumed to hold); an optional key missing there is skipped, so an envFrom value of the same
    name stays. Downward-API entries are left out."""
    result: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref is not None, f"{container['name']}: envFrom other than a ConfigMap: {source}"
        found = [c for c in manifests.of_kind("ConfigMap") if c["metadata"]["name"] == ref["name"]]
        if not found:
            assert ref.get("optional"), f"{container['name']}: no ConfigMap {ref['name']}"
            continue
        result.update({source.get("prefix", "") + k: v for k, v in found[0].get("data", {}).items()})
    secret_data = secret_data or {}
    for name, entry in env(container).items():
        if "value" in entry:
            result[name] = entry["value"]
            continue
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            continue
        if ref["key"] in secret_data:
            result[name] = secret_data[ref["key"]]
        else:
            assert ref.get("optional"), f"{container['name']}: {name} needs key {ref['key']}"
    return result


# The settings classes each app Deployment's process parses its environment with (module:class).
SETTINGS_CLASSES = {
    "facade": ("facade.settings:Settings",),
    **{m: ("services.common.server:ServeOptions", f"services.{m}.settings:Settings") for m in MODALITIES},
}


def settings_classes(deployment: str) -> list[type]:
    """The classes of SETTINGS_CLASSES[deployment], imported."""
    classes = []
    for spec in SETTINGS_CLASSES[deployment]:
        module, _, name = spec.partition(":")
        classes.append(getattr(import_module(module), name))
    return classes


def service_settings(manifests: Manifests, modality: str):
    """The modality service's own Settings, parsed from what its Deployment sets (SettingsError if bad)."""
    _, cls = settings_classes(modality)
    return cls.from_env(plain_env(manifests.deployment(modality).container()))


def dns_target(target: str) -> tuple[str, str, int]:
    """dns:///<service>.<namespace>.svc.cluster.local:<port> -> (service, namespace, port)."""
    assert target.startswith("dns:///"), f"{target!r}: not a dns:/// target"
    host, _, port = target.removeprefix("dns:///").rpartition(":")
    parts = host.split(".")
    assert parts[2:] == ["svc", "cluster", "local"] and len(parts) == 5, f"{target!r}: not <svc>.<ns>.svc.cluster.local"
    return parts[0], parts[1], int(port)


def flag_values(args: list[str], flag: str) -> list[str]:
    """Values of `--flag=value` arguments, in order."""
    return [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]


def url_host(url: str) -> str:
    return urlsplit(url).hostname or ""


_MEMORY_UNITS = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
}


def quantity(value: str | int | float) -> Fraction:
    """A Kubernetes resource quantity as a number (cpu in cores, memory in bytes)."""
    text = str(value)
    if text.endswith("m"):
        return Fraction(text[:-1]) / 1000
    for unit, factor in _MEMORY_UNITS.items():
        if text.endswith(unit):
            return Fraction(text[: -len(unit)]) * factor
    return Fraction(text)


def all_containers(workload: Workload) -> Iterator[tuple[str, dict]]:
    """(kind of container, container) for init and main containers."""
    for c in workload.init_containers:
        yield "init", c
    for c in workload.containers:
        yield "main", c
