"""The Dockerfiles (read with BuildKit's own parser) and `make images-build`: pinned bases,
multi-stage builds, non-root users that match the manifests, build contexts that hold what the
builds copy, and the images the manifests run."""

from __future__ import annotations

import os
import re
import subprocess
from fnmatch import fnmatchcase
from pathlib import Path

import dockerfile
import pytest

from tests.k8s.manifests import MODALITIES, NATS_IMAGE, REDIS_IMAGE, REDIS_UID, all_containers
from tests.k8s.render import ROOT

DOCKER_DIR = ROOT / "docker"
APP = DOCKER_DIR / "app.Dockerfile"
TRITON = DOCKER_DIR / "triton.Dockerfile"
BUILD_ARGS = {APP: [{"MODULE": m} for m in ("facade", "services.text", "services.embeddings", "services.images")],
              TRITON: [{"MODALITY": m} for m in MODALITIES]}


def _stages(path: Path, build_args: dict[str, str]) -> list[list[dockerfile.Command]]:
    """The instructions of each stage, ARG defaults and build args substituted."""
    values = dict(build_args)
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            values.setdefault(name, default)
        value = tuple(re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), v) for v in command.value)
        command = command._replace(value=value)
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def _first(stage, cmd):
    return [c for c in stage if c.cmd == cmd]


@pytest.mark.parametrize("path", [APP, TRITON], ids=lambda p: p.name)
def test_builds_are_multi_stage_from_pinned_bases_and_end_non_root(path):
    for args in BUILD_ARGS[path]:
        stages = _stages(path, args)
        assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
        for stage in stages:
            base = stage[0].value[0]
            name, _, tag = base.partition(":")
            assert tag and tag != "latest" and "$" not in base, f"unpinned base {base}"
        (user,) = _first(stages[-1], "USER")
        uid, _, gid = user.value[0].partition(":")
        assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0, "numeric non-root USER"


def test_bases_are_the_ones_the_project_runs():
    app = _stages(APP, {"MODULE": "facade"})
    assert {s[0].value[0] for s in app} == {"python:3.11-slim-bookworm"}
    triton = _stages(TRITON, {"MODALITY": "text"})
    assert {s[0].value[0] for s in triton} == {"nvcr.io/nvidia/tritonserver:24.10-py3"}


def test_app_images_generate_the_protobuf_code_as_make_proto_does():
    final = _stages(APP, {"MODULE": "facade"})
    runs = " ".join(c.value[0] for stage in final for c in stage if c.cmd == "RUN")
    assert "grpc_tools.protoc -Iprotos --python_out=build/gen --pyi_out=build/gen" in runs
    assert "--grpc_python_out=build/gen" in runs
    makefile = (ROOT / "Makefile").read_text()
    assert "-m grpc_tools.protoc -Iprotos --python_out=$(GEN) --pyi_out=$(GEN)" in makefile
    env = dict(zip(*[iter(sum((c.value for c in final[-1] if c.cmd == "ENV"), ()))] * 2))
    assert "PYTHONPATH" not in env, "the venv's hubmesh.pth names the import path, as make setup's does"
    assert 'hubmesh.pth").write_text("/app\\n/app/build/gen\\n")' in runs
    assert env["HUBMESH_MODULE"] == "facade"


@pytest.mark.parametrize("modality", MODALITIES)
def test_triton_images_hold_the_model_repository_and_numpy_below_2(modality):
    stages = _stages(TRITON, {"MODALITY": modality})
    copies = [c.value for c in stages[-1] if c.cmd == "COPY" and not c.flags]
    assert (f"services/{modality}/model_repository", "/models") in copies
    requirements = (DOCKER_DIR / "triton" / f"{modality}.requirements.txt").read_text()
    assert re.search(r"^numpy>=1\.26,<2$", requirements, re.M), "the 24.10 python backend stub needs numpy < 2"
    assert (DOCKER_DIR / "triton" / f"{modality}.weights.txt").is_file()


def test_the_prepare_step_reads_the_model_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare", DOCKER_DIR / "triton" / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    config = ROOT / "services" / "text" / "model_repository" / "smollm2" / "config.pbtxt"
    assert prepare.parameter(config, "dtype") == "f16"


# -- build contexts ------------------------------------------------------------------------------


def _ignored(relative: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for these files: last match wins, a match on a parent counts."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!")
        regex = re.escape(glob).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates) or (glob.endswith("/**") and fnmatchcase(relative, glob)):
            ignored = not negate
    return ignored


def _patterns(dockerfile_path: Path) -> list[str]:
    ignore = dockerfile_path.with_name(dockerfile_path.name + ".dockerignore")
    return [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("path", [APP, TRITON], ids=lambda p: p.name)
def test_build_contexts_hold_what_the_builds_copy_and_nothing_heavy(path):
    patterns = _patterns(path)
    for heavy in (".venv/bin/python", ".triton/bin/tritonserver", ".git/HEAD", "build/gen/x.py", "run/logs/a.log"):
        assert _ignored(heavy, patterns), f"{heavy} would be sent to the builder"
    for args in BUILD_ARGS[path]:
        for stage in _stages(path, args):
            for copy in (c for c in stage if c.cmd == "COPY" and not c.flags):
                for source in copy.value[:-1]:
                    files = [source] if (ROOT / source).is_file() else [
                        str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*") if p.is_file() and "__pycache__" not in p.parts
                    ]
                    assert files, f"COPY {source}: nothing there"
                    kept = [f for f in files if not _ignored(f, patterns)]
                    assert kept, f"COPY {source}: excluded by {path.name}.dockerignore"


def test_the_app_context_leaves_model_repositories_to_the_triton_images():
    patterns = _patterns(APP)
    assert _ignored("services/text/model_repository/smollm2/1/model.py", patterns)
    for needed in ("services/text/templates/smollm2-chatml.jinja", "services/text/catalog.toml", "facade/__main__.py"):
        assert not _ignored(needed, patterns), needed


# -- the images the manifests run ----------------------------------------------------------------


def test_pods_run_as_the_user_their_image_declares(manifests):
    app_user = int(_first(_stages(APP, {"MODULE": "facade"})[-1], "USER")[0].value[0].split(":")[0])
    triton_user = int(_first(_stages(TRITON, {"MODALITY": "text"})[-1], "USER")[0].value[0].split(":")[0])
    for deployment in manifests.deployments:
        if deployment.name == "redis":  # the official image's `redis` user (not root: its entrypoint then skips su-exec)
            assert deployment.container()["image"] == REDIS_IMAGE
            assert deployment.pod_spec["securityContext"]["runAsUser"] == REDIS_UID
            continue
        if deployment.name == "nats":  # the official image runs as any user: a non-root one of ours
            assert deployment.container()["image"] == NATS_IMAGE
            assert deployment.pod_spec["securityContext"]["runAsUser"] >= 1000
            continue
        expected = triton_user if deployment.name.startswith("triton-") else app_user
        assert deployment.pod_spec["securityContext"]["runAsUser"] == expected, deployment.name


def _fake_docker(tmp_path: Path) -> Path:
    log = tmp_path / "docker.log"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    return fake


def test_images_build_builds_every_image_the_overlays_run(tmp_path, cpu, gpu):
    fake = _fake_docker(tmp_path)
    subprocess.run(["make", "-s", "images-build", f"DOCKER={fake}", "IMAGES_GPU=1"], cwd=ROOT, check=True,
                   capture_output=True, timeout=60)
    built = {line.rsplit(" -t ", 1)[1].split()[0] for line in (tmp_path / "docker.log").read_text().splitlines()
             if line.startswith("build ")}
    run = {c["image"] for m in (cpu, gpu) for w in m.workloads for _, c in all_containers(w)}
    ours = {image for image in run if image.startswith("hubmesh/")}
    assert ours == built
    # NVIDIA's own, unchanged; the official Redis image for the limits' counters, NATS's for the routing bus
    assert run - ours == {"nvcr.io/nvidia/tritonserver:24.12-vllm-python-py3", REDIS_IMAGE, NATS_IMAGE}


def test_images_build_without_a_docker_engine_says_so_and_succeeds(tmp_path):
    result = subprocess.run(
        ["make", "-s", "images-build", f"DOCKER={ROOT / 'no-such-docker'}"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={**os.environ},
    )
    assert result.returncode == 0
    assert "no Docker engine reachable" in result.stdout
