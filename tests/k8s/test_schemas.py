"""Every rendered object is valid against the Kubernetes schemas (offline), and the check bites."""

from __future__ import annotations

import copy

import pytest

from tests.k8s.render import KUBERNETES_VERSIONS, OVERLAYS, kubectl, render, validate


def test_the_tools_are_installed_and_local():
    # A missing tool must fail this suite, never skip it: both come with the dev extra.
    import kubernetes_validate  # noqa: F401

    assert kubectl()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid(overlay, version):
    objects = render(overlay)
    assert len(objects) > 40
    errors = [e for obj in objects for e in validate(obj, version)]
    assert errors == []


def test_every_namespaced_object_is_in_the_hubmesh_namespace(manifests):
    cluster_scoped = {"Namespace"}
    for obj in manifests.objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == manifests.namespace == "hubmesh", obj["metadata"]


def _deployment(overlay: str) -> dict:
    return copy.deepcopy(next(o for o in render(overlay) if o["kind"] == "Deployment"))


def test_validation_rejects_unknown_and_mistyped_fields():
    bogus = _deployment("cpu")
    bogus["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # misspelt
    assert validate(bogus, KUBERNETES_VERSIONS[0])
    mistyped = _deployment("cpu")
    mistyped["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    assert validate(mistyped, KUBERNETES_VERSIONS[0])


def test_custom_resources_are_validated_against_their_crd():
    monitor = next(o for o in render("gpu") if o["kind"] == "ServiceMonitor")
    assert validate(monitor, KUBERNETES_VERSIONS[0]) == []
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"  # the field is `interval`
    assert validate(monitor, KUBERNETES_VERSIONS[0])


def test_an_unknown_kind_is_an_error_not_a_pass():
    assert validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, "1.30.0")
