"""The components find each other: gRPC targets, listen addresses, health names, the models each
Triton loads and each service's catalogue serves, secrets, tracing and metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from local.processes import free_ports, http_ok
from services.common.settings import SettingsError
from tests.k8s.manifests import (
    FACADE_PORT,
    GRPC_PORTS,
    GRPC_SERVICES,
    METRICS_PORT,
    MODALITIES,
    REDIS_PORT,
    SETTINGS_CLASSES,
    TRITON_PORTS,
    Manifests,
    Workload,
    dns_target,
    effective_env,
    env,
    env_value,
    flag_values,
    plain_env,
    quantity,
    selects_map,
    service_settings,
    settings_classes,
)
from tests.k8s.render import K8S_DIR, KUBERNETES_VERSIONS, ROOT, kubectl, validate

GPU_OVERLAY = K8S_DIR / "overlays" / "gpu"
MONITORING = K8S_DIR / "components" / "monitoring"
EXTERNAL_SECRETS = {"gpu": {"hubmesh-secrets", "huggingface-token"}}  # made out of band (README)


def _source(*folders: str) -> str:
    return "\n".join(p.read_text() for folder in folders for p in sorted((ROOT / folder).rglob("*.py")))


# -- façade -> services -> Tritons ---------------------------------------------------------------


@pytest.mark.parametrize("modality", MODALITIES)
def test_the_facade_reaches_each_service_through_its_headless_service(manifests, modality):
    target = env_value(manifests.deployment("facade").container(), f"HUBMESH_{modality.upper()}_TARGET")
    name, namespace, port = dns_target(target)
    assert namespace == manifests.namespace
    service = manifests.get("Service", name)
    assert service is manifests.service_for(modality) and service["spec"]["clusterIP"] == "None"
    assert port == {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == GRPC_PORTS[modality]


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_service_listens_where_its_probe_and_service_look(manifests, modality):
    deployment = manifests.deployment(modality)
    c = deployment.container()
    port = deployment.port("grpc")
    assert port == GRPC_PORTS[modality]
    assert env_value(c, f"HUBMESH_{modality.upper()}_LISTEN") == f"0.0.0.0:{port}"
    probe = c["readinessProbe"]["grpc"]
    assert probe == {"port": port, "service": GRPC_SERVICES[modality]}
    # the name the service registers in gRPC health checking
    assert f'"{GRPC_SERVICES[modality]}"' in (ROOT / "services" / modality / "__main__.py").read_text()


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_service_calls_every_pod_of_its_own_triton(manifests, modality):
    from services.common.replicas import parse_targets

    url = env_value(manifests.deployment(modality).container(), f"HUBMESH_{modality.upper()}_TRITON_URL")
    name, namespace, port = dns_target(url)
    assert namespace == manifests.namespace
    service = manifests.get("Service", name)
    assert service is manifests.service_for(f"triton-{modality}")
    assert port == TRITON_PORTS["grpc"] == manifests.deployment(f"triton-{modality}").port("grpc")
    # headless and ready pods only: the name resolves to each ready pod, one replica (channel) each
    assert service["spec"]["clusterIP"] == "None" and not service["spec"].get("publishNotReadyAddresses")
    settings = service_settings(manifests, modality)
    (target,) = parse_targets(settings.triton_url, settings.triton_metrics_port)
    assert target.discover and (target.host, target.port) == (f"{name}.{namespace}.svc.cluster.local", port)


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_service_finds_pods_its_triton_autoscaler_adds_within_a_readiness_period(manifests, modality):
    # set, not left to the default: a pod the HPA adds (or that turns ready again) is found within
    # about one more readiness period of the kubelet's, and CoreDNS answers from a 5 s cache anyway
    assert f"HUBMESH_{modality.upper()}_TRITON_RESOLVE_INTERVAL_S" in env(manifests.deployment(modality).container())
    settings = service_settings(manifests, modality)
    triton = manifests.deployment(f"triton-{modality}").container("tritonserver")
    assert settings.triton_resolve_interval_s <= triton["readinessProbe"]["periodSeconds"]
    scale_up = manifests.get("HorizontalPodAutoscaler", f"triton-{modality}")["spec"]["behavior"]["scaleUp"]
    assert settings.triton_resolve_interval_s + settings.triton_probe_interval_s < scale_up["stabilizationWindowSeconds"]


def test_the_text_service_routes_by_prefix_on_load_scraped_from_each_triton_pod(manifests):
    from services.text.prefix_picker import PICKERS

    c = manifests.deployment("text").container()
    assert env_value(c, "HUBMESH_TEXT_ROUTING") == "prefix"
    settings = service_settings(manifests, "text")
    assert settings.routing in PICKERS and settings.replica_options()["scrape"]
    # the port it scrapes on every pod the name resolves to is the one Triton serves its metrics on
    triton = manifests.deployment("triton-text")
    (metrics_port,) = flag_values(triton.container("tritonserver")["args"], "--metrics-port")
    assert int(env_value(c, "HUBMESH_TEXT_TRITON_METRICS_PORT")) == settings.triton_metrics_port
    assert settings.triton_metrics_port == int(metrics_port) == triton.port("metrics") == TRITON_PORTS["metrics"]


def test_the_text_pods_share_their_routing_view_over_the_in_cluster_nats(manifests):
    """HUBMESH_TEXT_ROUTING_BUS_URL names base/nats's Service on the port its pod serves clients on; the
    bus keeps JetStream in memory, bounded inside its container's memory limit."""
    from tests.k8s.manifests import NATS_PORT, quantity

    settings = service_settings(manifests, "text")
    url = urlsplit(settings.routing_bus_url)
    service = manifests.service_for("nats")
    assert url.scheme == "nats" and url.hostname == service["metadata"]["name"] == "nats"
    assert url.port == {p["name"]: p["port"] for p in service["spec"]["ports"]}["client"] == NATS_PORT
    nats = manifests.deployment("nats")
    assert nats.port("client") == NATS_PORT and nats.obj["spec"]["replicas"] == 1
    assert settings.prefix_view() is not None and settings.prefix_view().url == settings.routing_bus_url
    (config_map,) = [o for o in manifests.of_kind("ConfigMap") if o["metadata"]["name"].startswith("nats-config")]
    conf = config_map["data"]["nats.conf"]
    assert re.search(r"port: 4222", conf) and "jetstream" in conf
    memory = re.search(r"max_memory_store: (\d+)MB", conf)
    limit = quantity(nats.container()["resources"]["limits"]["memory"])
    assert memory and int(memory.group(1)) * 2**20 <= limit / 2


def test_the_facade_listens_on_all_interfaces_and_probes_its_own_endpoints(manifests):
    deployment = manifests.deployment("facade")
    c = deployment.container()
    assert env_value(c, "HUBMESH_HTTP_HOST") == "0.0.0.0"
    assert int(env_value(c, "HUBMESH_HTTP_PORT")) == deployment.port("http") == FACADE_PORT
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert {"/health", "/ready"} <= _facade_paths()


def _facade_paths() -> set[str]:
    """The paths the façade serves (its one route table)."""
    from facade.routes import ROUTES

    return {route.path for route in ROUTES}


def _settings_variables() -> set[str]:
    """Every variable a settings class reads (pydantic-settings: env_prefix + field name, or an alias)."""
    classes = {cls for name in SETTINGS_CLASSES for cls in settings_classes(name)}
    return {name for cls in classes for name in cls.env_names().values()}


def test_every_hubmesh_variable_set_is_one_the_code_reads_with_a_value_it_accepts(manifests):
    code = _source("facade", "services")
    read = _settings_variables()
    for workload in manifests.workloads:
        for c in workload.containers:
            for name in env(c):
                if name.startswith("HUBMESH_"):
                    assert name in read or f'"{name}"' in code, f"{workload.name}: {name} is read nowhere in facade/ or services/"
    for name in SETTINGS_CLASSES:
        # each process parses its environment with these classes at start-up (SettingsError: exit 1)
        environment = plain_env(manifests.deployment(name).container())
        for cls in settings_classes(name):
            try:
                cls.from_env(environment)
            except SettingsError as err:
                pytest.fail(f"{name}: {cls.__module__}.{cls.__name__}: {err}")


# -- Tritons -------------------------------------------------------------------------------------


def _triton(manifests: Manifests, modality: str) -> tuple[Workload, dict, list[str]]:
    deployment = manifests.deployment(f"triton-{modality}")
    c = deployment.container("tritonserver")
    return deployment, c, c["args"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_tritons_serve_on_the_expected_ports_with_explicit_models(manifests, modality):
    deployment, c, args = _triton(manifests, modality)
    assert c["command"] == ["tritonserver"]
    assert flag_values(args, "--model-repository") == ["/models"]
    assert flag_values(args, "--model-control-mode") == ["explicit"]
    for kind, port in TRITON_PORTS.items():
        assert flag_values(args, f"--{kind}-port") == [str(port)] and deployment.port(kind) == port
    # per-pod /dev/shm, but a prefix of our own keeps regions recognisable (and clean-up safe)
    assert flag_values(args, "--backend-config") == [f"python,shm-region-prefix-name=hubmesh-{modality}_"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_tritons_have_memory_backed_shm_and_triton_health_probes(manifests, overlay, modality):
    deployment, c, _ = _triton(manifests, modality)
    shm = deployment.mounted_volume(c, "/dev/shm")
    assert shm is not None and shm["emptyDir"]["medium"] == "Memory"
    assert quantity(shm["emptyDir"]["sizeLimit"]) > 64 * 2**20  # the container runtime's default
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    # model loading: minutes on CPU, up to ten and more on a GPU node (weights, CUDA graphs)
    budget = startup["failureThreshold"] * startup["periodSeconds"]
    assert budget >= (600 if overlay == "gpu" else 120), budget


def _catalog(manifests: Manifests, modality: str, tmp_path: Path) -> Path:
    """The catalogue file the service reads: its ConfigMap's data written out, or the default."""
    deployment = manifests.deployment(modality)
    c = deployment.container()
    entry = env(c).get(f"HUBMESH_{modality.upper()}_CATALOG")
    if entry is None:
        return ROOT / "services" / modality / "catalog.toml"
    path = Path(entry["value"])
    volume = deployment.mounted_volume(c, str(path.parent))
    assert volume is not None and "configMap" in volume, f"{modality}: catalogue not mounted from a ConfigMap"
    data = manifests.get("ConfigMap", volume["configMap"]["name"])["data"]
    assert path.name in data
    folder = tmp_path / modality
    folder.mkdir()
    for key, value in data.items():
        (folder / key).write_text(value)
    return folder / path.name


def _load_catalog(modality: str, path: Path) -> dict:
    if modality == "text":
        from services.text.catalog import load_catalog
    elif modality == "embeddings":
        from services.embeddings.catalog import load_catalog
    else:
        from services.images.catalog import load_catalog
    return load_catalog(path)


def _model_config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_triton_loads_the_models_its_service_catalogue_serves(manifests, modality, tmp_path):
    catalog = _load_catalog(modality, _catalog(manifests, modality, tmp_path))
    _, _, args = _triton(manifests, modality)
    assert sorted(flag_values(args, "--load-model")) == sorted({e.triton_model for e in catalog.values()})


def _repository_configs(manifests: Manifests, modality: str) -> dict[str, model_config_pb2.ModelConfig]:
    """The model config each loaded model gets, wherever it comes from (image or ConfigMap)."""
    deployment, c, args = _triton(manifests, modality)
    models = deployment.mounted_volume(c, "/models")
    config_name = (flag_values(args, "--model-config-name") or [None])[0]
    configs = {}
    for model in flag_values(args, "--load-model"):
        if models is not None:  # the whole repository is a ConfigMap
            cm = manifests.get("ConfigMap", models["configMap"]["name"])
            items = {i["path"]: i["key"] for i in models["configMap"]["items"]}
            configs[model] = _model_config(cm["data"][items[f"{model}/config.pbtxt"]])
            continue
        directory = ROOT / "services" / modality / "model_repository" / model  # baked into the image
        assert (directory / "1" / "model.py").is_file()
        if config_name is None:
            configs[model] = _model_config((directory / "config.pbtxt").read_text())
            continue
        volume = deployment.mounted_volume(c, f"/models/{model}/configs")
        assert volume is not None, f"--model-config-name={config_name} but nothing at /models/{model}/configs"
        cm = manifests.get("ConfigMap", volume["configMap"]["name"])
        configs[model] = _model_config(cm["data"][f"{config_name}.pbtxt"])
        reference = _model_config((directory / "config.pbtxt").read_text())
        # a per-environment config changes where and what runs, never the tensor contract
        assert configs[model].name == model
        assert list(configs[model].input) == list(reference.input)
        assert list(configs[model].output) == list(reference.output)
        assert configs[model].max_batch_size == reference.max_batch_size
    return configs


@pytest.mark.parametrize("modality", MODALITIES)
def test_model_configs_parse_and_run_where_the_pod_runs(manifests, modality):
    deployment, c, _ = _triton(manifests, modality)
    on_gpu = "nvidia.com/gpu" in c["resources"]["limits"]
    for name, config in _repository_configs(manifests, modality).items():
        kinds = {model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group}
        if config.backend == "vllm":
            assert on_gpu and kinds <= {"KIND_MODEL"}, name
        else:
            assert kinds == ({"KIND_GPU"} if on_gpu else {"KIND_CPU"}), name


@pytest.mark.parametrize("modality", MODALITIES)
def test_tritons_age_connections_out_without_cutting_a_call(manifests, modality):
    """The services find replicas by resolving again (one channel per pod), not by reconnecting; an
    aged-out connection only reconnects to the same pod, and a call running on it must not be cut."""
    from importlib import import_module

    _, _, args = _triton(manifests, modality)
    (age,) = flag_values(args, "--grpc-max-connection-age")
    (grace,) = flag_values(args, "--grpc-max-connection-age-grace")
    # a call still running when its connection ages out gets the grace period, then is cut
    longest = import_module(f"services.{modality}.settings").Settings().triton_timeout_s
    assert int(age) <= 600_000 and int(grace) >= longest * 1000 + 30_000, (age, grace, longest)


TRITONSERVER = ROOT / ".triton" / "bin" / "tritonserver"


def _triton_live(port: int) -> bool:
    try:
        return http_ok(f"http://127.0.0.1:{port}/v2/health/live", timeout_s=1)
    except OSError:
        return False


def test_tritonserver_accepts_every_argument_the_manifests_pass(cpu, gpu):
    """NVIDIA's tritonserver 2.51 (the 24.10 release, unpacked by `make setup`) starts with each
    Deployment's arguments; only the repository, the models and the ports are swapped for local ones."""
    assert TRITONSERVER.is_file(), "no .triton/bin/tritonserver: run `make setup`"
    local = ("--model-repository", "--load-model", "--http-port", "--grpc-port", "--metrics-port")
    runs = []
    with tempfile.TemporaryDirectory() as repository:
        try:
            for manifests in (cpu, gpu):
                for modality in MODALITIES:
                    _, _, args = _triton(manifests, modality)
                    ports = dict(zip(("http", "grpc", "metrics"), free_ports(3), strict=True))
                    command = [str(TRITONSERVER), *(a for a in args if not a.startswith(local)),
                               f"--model-repository={repository}", "--http-address=127.0.0.1",
                               "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                               *(f"--{kind}-port={port}" for kind, port in ports.items()),
                               f"--backend-directory={ROOT / '.triton' / 'backends'}",
                               f"--cache-directory={ROOT / '.triton' / 'caches'}"]
                    env = {**os.environ, "LD_LIBRARY_PATH": str(ROOT / ".triton" / "lib")}
                    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    runs.append((f"{modality}: {' '.join(args)}", proc, ports["http"]))
            deadline = time.monotonic() + 60
            pending = list(runs)
            while pending and time.monotonic() < deadline:
                for run in list(pending):
                    name, proc, port = run
                    assert proc.poll() is None, f"tritonserver refused {name}:\n{proc.stdout.read()[-2000:]}"
                    if _triton_live(port):
                        pending.remove(run)
                time.sleep(0.2)
            assert not pending, f"not live within 60 s: {[name for name, _, _ in pending]}"
        finally:
            for _, proc, _ in runs:
                proc.terminate()
            for _, proc, _ in runs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()


# -- the gpu overlay -----------------------------------------------------------------------------


def test_gpu_tritons_get_a_gpu_on_gpu_nodes_and_the_rest_stays_off_them(gpu):
    for deployment in gpu.deployments:
        c = deployment.containers[0]
        spec = deployment.pod_spec
        if deployment.name.startswith("triton-"):
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1", deployment.name
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            # no spare GPU for a surge pod
            assert deployment.obj["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
        else:
            assert "nvidia.com/gpu" not in c["resources"]["limits"] and "tolerations" not in spec


def test_gpu_triton_images(gpu):
    images = {m: gpu.deployment(f"triton-{m}").container("tritonserver")["image"] for m in MODALITIES}
    assert images["embeddings"] == "hubmesh/triton-embeddings:0.1.0-gpu"
    assert images["images"] == "hubmesh/triton-images:0.1.0-gpu"
    name, _, tag = images["text"].partition(":")
    assert name == "nvcr.io/nvidia/tritonserver" and tag.endswith("-vllm-python-py3")
    # The text service sends return_finish_reason / return_num_*_tokens; the vLLM backend of 24.10
    # rejects them (only text_input, stream, sampling_parameters, exclude_input_in_output), 24.12
    # is the first release with them.
    assert tuple(map(int, tag.split("-")[0].split("."))) >= (24, 12), tag
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text()
    assert "ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile


def _weights():
    import importlib.util

    spec = importlib.util.spec_from_file_location("download_weights", GPU_OVERLAY / "weights" / "download_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_models_load_from_the_weights_the_job_downloads(gpu):
    weights = _weights()
    wanted = set(weights.MODELS)
    paths = {}
    for modality in MODALITIES:
        deployment, c, _ = _triton(gpu, modality)
        volume = deployment.mounted_volume(c, "/weights")
        assert volume["persistentVolumeClaim"] == {"claimName": "model-weights", "readOnly": True}
        for name, config in _repository_configs(gpu, modality).items():
            if config.backend == "vllm":
                cm = gpu.get("ConfigMap", deployment.volume("models")["configMap"]["name"])
                path = json.loads(cm["data"]["model.json"])["model"]
            else:
                path = config.parameters["model_path"].string_value
            repo = path.removeprefix("/weights/")
            assert repo in wanted, f"{modality}: {path} is not downloaded by the Job"
            paths[modality] = repo
            # the init container waits for the Job's marker of exactly this model
            (init,) = deployment.init_containers
            assert f"/weights/{repo}/{weights.MARKER}" in " ".join(init["command"])
    assert set(paths.values()) == wanted
    job = Workload(gpu.get("Job", "download-weights"))
    assert job.mounted_volume(job.container(), "/weights")["persistentVolumeClaim"]["claimName"] == "model-weights"
    script = gpu.get("ConfigMap", job.volume("script")["configMap"]["name"])["data"]["download_weights.py"]
    assert script == (GPU_OVERLAY / "weights" / "download_weights.py").read_text()
    assert job.container()["command"] == ["python3", "/opt/hubmesh/download/download_weights.py"]
    (pvc,) = [p for p in gpu.of_kind("PersistentVolumeClaim") if p["metadata"]["name"] == "model-weights"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_gpu_catalogues_describe_the_real_models(gpu, tmp_path):
    text = _load_catalog("text", _catalog(gpu, "text", tmp_path))
    (llama,) = text.values()
    assert llama.id == "meta-llama/Meta-Llama-3-8B-Instruct"
    model_json = json.loads(gpu.get("ConfigMap", gpu.deployment("triton-text").volume("models")["configMap"]["name"])["data"]["model.json"])
    assert llama.context_length == model_json["max_model_len"]
    prompt = llama.chat_template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi! "}])
    assert prompt == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )  # vLLM's tokenizer adds <|begin_of_text|> itself

    (e5,) = _load_catalog("embeddings", _catalog(gpu, "embeddings", tmp_path)).values()
    assert (e5.id, e5.dimensions) == ("intfloat/e5-large-v2", 1024)
    (config,) = _repository_configs(gpu, "embeddings").values()
    assert e5.max_input_tokens == int(config.parameters["max_seq_length"].string_value) - 2  # [CLS], [SEP]

    (sdxl,) = _load_catalog("images", _catalog(gpu, "images", tmp_path)).values()
    assert sdxl.id == "stabilityai/stable-diffusion-xl-base-1.0" and (1024, 1024) in sdxl.sizes
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in sdxl.sizes)


def test_the_gpu_text_engine_keeps_the_prefixes_prefix_routing_sends_it(gpu):
    # prefix routing pays off only where the engine reuses the KV cache of a prompt's prefix
    if service_settings(gpu, "text").routing == "prefix":
        cm = gpu.get("ConfigMap", gpu.deployment("triton-text").volume("models")["configMap"]["name"])
        assert json.loads(cm["data"]["model.json"]).get("enable_prefix_caching") is True


def test_the_images_service_scales_out_only_with_a_shared_store(manifests):
    deployment = manifests.deployment("images")
    c = deployment.container()
    store = deployment.mounted_volume(c, env_value(c, "HUBMESH_IMAGES_STORE_DIR"))
    hpa = manifests.get("HorizontalPodAutoscaler", "images")["spec"]
    if "emptyDir" in store:  # one store per pod: a link works only on the replica that made it
        assert hpa["maxReplicas"] == 1
    else:
        claim = manifests.get("PersistentVolumeClaim", store["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert hpa["maxReplicas"] > 1


def test_the_facade_database_is_a_secret_or_sqlite_on_a_volume_of_its_own(manifests):
    """HUBMESH_DATABASE_URL from the Secret (optional); without it the settings' default, SQLite
    under XDG_CACHE_HOME, lies on a writable emptyDir (the root filesystem is read-only)."""
    from facade.settings import Settings as FacadeSettings
    from facade.store.database import parse_url

    deployment = manifests.deployment("facade")
    c = deployment.container()
    ref = env(c)["HUBMESH_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"].startswith("hubmesh-secrets") and (ref["key"], ref.get("optional")) == ("database-url", True)
    settings = FacadeSettings.from_env(plain_env(c))  # the Secret's key absent
    kind, path = parse_url(settings.database_url)
    assert kind == "sqlite" and c["securityContext"]["readOnlyRootFilesystem"]
    volume = deployment.mounted_volume(c, os.path.dirname(path))
    assert volume is not None and "emptyDir" in volume and "sizeLimit" in volume["emptyDir"]


# -- limits and budgets: the façade's counters in Redis -----------------------------------------

MANAGED_REDIS_URL = "rediss://:PASSWORD@redis.example.com:6380/0"


def _required_secret_keys(c: dict) -> dict[str, str]:
    """A placeholder for each Secret key the container cannot start without."""
    refs = [e["valueFrom"]["secretKeyRef"] for e in env(c).values() if "secretKeyRef" in e.get("valueFrom", {})]
    return {ref["key"]: f"placeholder-{ref['key']}" for ref in refs if not ref.get("optional")}


def _own_secret(manifests: Manifests) -> dict[str, str]:
    """The keys of the overlay's own hubmesh-secrets, decoded ({} where it is made out of band)."""
    import base64

    secrets = [s for s in manifests.of_kind("Secret") if s["metadata"]["name"].startswith("hubmesh-secrets")]
    data = {}
    for secret in secrets:
        data |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        data |= secret.get("stringData", {})
    return data


def _facade_settings(manifests: Manifests, secret_data: dict[str, str]):
    from facade.settings import Settings as FacadeSettings

    c = manifests.deployment("facade").container()
    return FacadeSettings.from_env(effective_env(manifests, c, {**_required_secret_keys(c), **secret_data}))


def test_the_facade_counts_in_the_in_cluster_redis_unless_the_secret_names_another(manifests):
    """HUBMESH_REDIS_URL: the Secret's optional key redis-url (a managed Redis; its URL holds a
    password), else the value of base/redis's ConfigMap through envFrom: an env entry whose optional
    key is missing is skipped by the kubelet, leaving the envFrom value in place."""
    c = manifests.deployment("facade").container()
    ref = env(c)["HUBMESH_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"].startswith("hubmesh-secrets") and (ref["key"], ref.get("optional")) == ("redis-url", True)
    (source,) = c["envFrom"]
    assert source["configMapRef"].get("optional") is True and not source.get("prefix")
    config_map = manifests.get("ConfigMap", source["configMapRef"]["name"])
    assert set(config_map["data"]) == {"HUBMESH_REDIS_URL"} and set(config_map["data"]) <= _settings_variables()
    # it goes with the Redis: the label that selects base/redis's objects selects it too
    assert config_map["metadata"]["labels"]["app.kubernetes.io/name"] == "redis"

    # no redis-url in the Secret: the in-cluster Redis, through its Service, on the port its pod listens on
    default = _facade_settings(manifests, {})
    url = urlsplit(default.redis_url)
    service = manifests.service_for("redis")
    service_port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["redis"]
    assert url.scheme == "redis" and url.path == "/0" and not url.password
    assert url.hostname == service["metadata"]["name"]  # a short name: the façade's own namespace
    assert url.port == service_port == manifests.deployment("redis").port("redis") == REDIS_PORT
    # the Secret's key, where present, wins
    assert _facade_settings(manifests, {"redis-url": MANAGED_REDIS_URL}).redis_url == MANAGED_REDIS_URL
    # the overlay's own Secret (cpu: secrets.env) leaves it to the in-cluster Redis
    assert _facade_settings(manifests, _own_secret(manifests)).redis_url == default.redis_url
    # set, not left to the default: what happens while Redis is away is a decision of its own
    assert env_value(c, "HUBMESH_LIMITS_FAIL_MODE") == default.limits_fail_mode == "fail_open"


def test_redis_keeps_only_expiring_counters_in_memory(manifests):
    deployment = manifests.deployment("redis")
    c = deployment.container()
    args = c["args"]
    assert all(a.startswith("--") for a in args[::2]) and len(args) % 2 == 0, args
    options = dict(zip(args[::2], args[1::2]))
    wanted = {"--save": "", "--appendonly": "no", "--maxmemory": "256mb", "--maxmemory-policy": "volatile-ttl"}
    assert options.items() >= wanted.items(), options
    # volatile-ttl evicts only keys with a TTL, soonest-expiring first: the limiter gives every counter one
    assert "PEXPIRE" in _source("facade/limits")
    # maxmemory counts the data only: leave room for the process, client buffers and fragmentation
    maxmemory = int(options["--maxmemory"].removesuffix("mb")) * 2**20
    assert maxmemory <= quantity(c["resources"]["limits"]["memory"]) * 3 / 4
    # nothing persistent, and the root filesystem read-only: its working directory is an emptyDir
    assert not any("persistentVolumeClaim" in v for v in deployment.pod_spec["volumes"])
    assert "emptyDir" in deployment.mounted_volume(c, "/data")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def _readme_block(marker: str) -> str:
    """The one ```yaml block of k8s/README.md that contains `marker`."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", (K8S_DIR / "README.md").read_text(), re.M | re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def _build(directory: Path) -> Manifests:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return Manifests([doc for doc in yaml.safe_load_all(result.stdout) if doc])


def test_a_managed_redis_replaces_the_in_cluster_one_with_the_readme_snippet(manifests, overlay, tmp_path):
    """The README's overlay for a managed Redis, on top of each overlay: base/redis gone, every other
    object as it was, and the façade's environment unchanged (the Secret's redis-url is the URL)."""
    kustomization = yaml.safe_load(_readme_block("$patch: delete"))
    kustomization["resources"] = [os.path.relpath(K8S_DIR / "overlays" / overlay, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    managed = _build(tmp_path)

    def names(m: Manifests) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in m.objects}

    redis = {
        (o["kind"], o["metadata"]["name"]) for o in manifests.objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "redis"
    }
    assert {kind for kind, _ in redis} == {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"}
    assert names(managed) == names(manifests) - redis
    c = managed.deployment("facade").container()
    assert env(c)["HUBMESH_REDIS_URL"] == env(manifests.deployment("facade").container())["HUBMESH_REDIS_URL"]
    assert _facade_settings(managed, {"redis-url": MANAGED_REDIS_URL}).redis_url == MANAGED_REDIS_URL
    assert _facade_settings(managed, {}).redis_url == ""  # no key: each pod counts alone (README)
    assert [e for obj in managed.objects for e in validate(obj, KUBERNETES_VERSIONS[0])] == []


# -- secrets, tracing, metrics -------------------------------------------------------------------


def test_secrets_come_from_secret_objects_never_literals(manifests, overlay):
    secret_keys = {s["metadata"]["name"]: set(s.get("data", {})) | set(s.get("stringData", {})) for s in manifests.of_kind("Secret")}
    readme = (K8S_DIR / "README.md").read_text()
    for workload in manifests.workloads:
        for c in workload.containers:
            for name, entry in env(c).items():
                if re.search(r"KEY|SECRET|TOKEN|JWKS", name):
                    assert "valueFrom" in entry, f"{workload.name}: {name} is a literal"
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    continue
                if ref["name"] in EXTERNAL_SECRETS.get(overlay, set()):
                    # made out of band: the README says how, key by key
                    assert ref["name"] in readme and ref["key"] in readme, f"{ref} undocumented"
                else:
                    assert ref["name"] in secret_keys, f"{workload.name}: no Secret {ref['name']}"
                    assert ref.get("optional") or ref["key"] in secret_keys[ref["name"]], f"{workload.name}: {ref}"


def test_app_containers_export_traces_under_their_own_name(manifests):
    names = set()
    for name in ("facade", *MODALITIES):
        c = manifests.deployment(name).container()
        assert env_value(c, "OTEL_EXPORTER_OTLP_ENDPOINT").startswith("http://otel-collector.observability:4318")
        names.add(env_value(c, "OTEL_SERVICE_NAME"))
    assert len(names) == 4
    for modality in MODALITIES:
        _, _, args = _triton(manifests, modality)
        trace = flag_values(args, "--trace-config")
        assert "mode=opentelemetry" in trace and "level=TIMESTAMPS" in trace
        assert f"opentelemetry,resource=service.name=triton-{modality}" in trace
        assert "opentelemetry,url=http://otel-collector.observability:4318/v1/traces" in trace


@pytest.mark.parametrize("name", [*MODALITIES, *(f"triton-{m}" for m in MODALITIES)])
def test_metrics_ports_are_exposed_and_announced(manifests, name):
    deployment = manifests.deployment(name)
    port = deployment.port("metrics")
    assert port == (TRITON_PORTS["metrics"] if name.startswith("triton-") else METRICS_PORT)
    if not name.startswith("triton-"):
        assert int(env_value(deployment.container(), "HUBMESH_METRICS_PORT")) == port
    notes = deployment.pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) == port
    service = manifests.service_for(name)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["metrics"] == port
    assert service["metadata"]["labels"]["hubmesh.io/metrics"] == "true"


def test_the_facade_announces_metrics_on_its_http_port(manifests):
    deployment = manifests.deployment("facade")
    notes = deployment.pod["metadata"]["annotations"]
    assert int(notes["prometheus.io/port"]) == deployment.port("http") and notes["prometheus.io/path"] == "/metrics"
    assert "/metrics" in _facade_paths()


def test_the_service_monitors_scrape_every_metrics_endpoint(gpu):
    monitors = {m["metadata"]["name"]: m for m in gpu.of_kind("ServiceMonitor")}
    facade = monitors.pop("hubmesh-facade")
    assert selects_map(facade["spec"]["selector"]["matchLabels"], gpu.service_for("facade")["metadata"]["labels"])
    # (their metricRelabelings: tests/k8s/test_monitoring.py)
    endpoints = [{k: v for k, v in e.items() if k != "metricRelabelings"} for e in facade["spec"]["endpoints"]]
    assert endpoints == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    (monitor,) = monitors.values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = sorted(s["metadata"]["name"] for s in gpu.of_kind("Service") if selects_map(selector, s["metadata"]["labels"]))
    with_metrics = sorted(
        s["metadata"]["name"] for s in gpu.of_kind("Service") if "metrics" in {p["name"] for p in s["spec"]["ports"]}
    )
    assert scraped == with_metrics == sorted([*MODALITIES, *(f"triton-{m}" for m in MODALITIES)])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_custom_metrics_are_ones_the_adapter_publishes(gpu, cpu):
    values = yaml.safe_load((MONITORING / "prometheus-adapter-values.yaml").read_text())
    published = {rule["name"]["as"] for rule in values["rules"]["custom"]}
    used = set()
    for hpa in gpu.of_kind("HorizontalPodAutoscaler"):
        pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert len(pods) == 1, hpa["metadata"]["name"]  # CPU plus one load signal of its own
        used |= set(pods)
    assert used == published
    # the cpu overlay runs without Prometheus: an HPA whose metric is missing never scales down
    assert all(m["type"] == "Resource" for h in cpu.of_kind("HorizontalPodAutoscaler") for m in h["spec"]["metrics"])
