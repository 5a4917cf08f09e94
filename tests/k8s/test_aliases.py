"""The façade's model aliases (HUBMESH_MODEL_ALIASES) in each overlay: every chain names models its
overlay's catalogues serve, and no alias is also a model's id (the façade would ignore it)."""

from __future__ import annotations

from facade.settings import Settings
from tests.k8s.manifests import MODALITIES, plain_env
from tests.k8s.test_wiring import _catalog, _load_catalog


def test_every_alias_names_models_the_catalogues_serve(manifests, tmp_path):
    settings = Settings.from_env(plain_env(manifests.deployment("facade").container()))
    assert settings.model_aliases, "the façade names at least one alias"
    served = {model for modality in MODALITIES
              for model in _load_catalog(modality, _catalog(manifests, modality, tmp_path))}
    for alias, chain in settings.model_aliases.items():
        assert alias not in served, f"the alias {alias!r} is also a model's id"
        assert set(chain) <= served, f"{alias}: {sorted(set(chain) - served)} served by no catalogue"
