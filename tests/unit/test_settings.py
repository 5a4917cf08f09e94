"""Settings: the environment variable names and defaults of the README's Configuration table,
list parsing, and one clear line (no traceback) for a bad value at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from facade.settings import Settings as FacadeSettings
from services.common.server import ServeOptions
from services.common.settings import SettingsError, settings_or_exit
from services.embeddings.settings import Settings as EmbeddingsSettings
from services.images.settings import Settings as ImagesSettings
from services.text.settings import Settings as TextSettings

ROOT = Path(__file__).resolve().parents[2]


# -- names and defaults --------------------------------------------------------------------------


def test_serve_options_names_and_defaults():
    assert ServeOptions.env_names() == {
        "grace_s": "HUBMESH_GRACE_S",
        "internal_secret": "HUBMESH_INTERNAL_SECRET",
        "metrics_port": "HUBMESH_METRICS_PORT",
        "max_in_flight": "HUBMESH_MAX_IN_FLIGHT",
        "admission": "HUBMESH_ADMISSION",
        "admission_wait_s": "HUBMESH_ADMISSION_WAIT_S",
        "admission_burst": "HUBMESH_ADMISSION_BURST",
    }
    options = ServeOptions.from_env({})
    assert (options.grace_s, options.internal_secret, options.metrics_port, options.max_in_flight) == (10.0, "", 9464, 64)
    assert (options.admission, options.admission_wait_s, options.burst) == ("fair", 0.5, 16)
    assert ServeOptions.from_env({"HUBMESH_MAX_IN_FLIGHT": "12", "HUBMESH_ADMISSION_BURST": "0"}).burst == 0
    assert ServeOptions.from_env({"HUBMESH_MAX_IN_FLIGHT": "10"}).burst == 3


@pytest.mark.parametrize(
    "cls, prefix, listen, triton_url, timeout_s",
    [
        (TextSettings, "HUBMESH_TEXT_", "127.0.0.1:50051", "127.0.0.1:8001", 600.0),
        (EmbeddingsSettings, "HUBMESH_EMBEDDINGS_", "127.0.0.1:50052", "127.0.0.1:8011", 60.0),
        (ImagesSettings, "HUBMESH_IMAGES_", "127.0.0.1:50053", "127.0.0.1:8021", 300.0),
    ],
)
def test_service_settings_names_and_defaults(cls, prefix, listen, triton_url, timeout_s):
    names = cls.env_names()
    for field in ("listen", "triton_url", "catalog", "triton_timeout_s"):
        assert names[field] == prefix + field.upper()
    settings = cls.from_env({})
    modality = prefix.removeprefix("HUBMESH_").removesuffix("_").lower()
    assert settings.listen == listen and settings.triton_url == triton_url
    assert settings.catalog == ROOT / "services" / modality / "catalog.toml"
    assert settings.triton_timeout_s == timeout_s


def test_service_specific_names_and_defaults():
    assert EmbeddingsSettings.env_names()["chunk_size"] == "HUBMESH_EMBEDDINGS_CHUNK_SIZE"
    assert EmbeddingsSettings.from_env({}).chunk_size == 32
    names = ImagesSettings.env_names()
    assert (names["store_dir"], names["image_ttl_s"]) == ("HUBMESH_IMAGES_STORE_DIR", "HUBMESH_IMAGES_TTL_S")
    assert ImagesSettings.from_env({}).image_ttl_s == 3600.0


def test_service_settings_read_their_variables():
    env = {
        "HUBMESH_TEXT_LISTEN": "0.0.0.0:6000",
        "HUBMESH_TEXT_TRITON_URL": "dns:///triton-text:8001",
        "HUBMESH_TEXT_CATALOG": "/etc/hubmesh/catalog.toml",
        "HUBMESH_TEXT_TRITON_TIMEOUT_S": "12.5",
        "HUBMESH_EMBEDDINGS_LISTEN": "elsewhere:1",  # another service's: not the text service's
    }
    settings = TextSettings.from_env(env)
    assert settings.listen == "0.0.0.0:6000" and settings.triton_url == "dns:///triton-text:8001"
    assert settings.catalog == Path("/etc/hubmesh/catalog.toml") and settings.triton_timeout_s == 12.5
    assert EmbeddingsSettings.from_env({"HUBMESH_EMBEDDINGS_CHUNK_SIZE": "8"}).chunk_size == 8
    images = ImagesSettings.from_env({"HUBMESH_IMAGES_TTL_S": "5", "HUBMESH_IMAGES_STORE_DIR": "/srv/images"})
    assert (images.image_ttl_s, images.store_dir) == (5.0, "/srv/images")


def test_images_store_dir_defaults_to_the_xdg_cache():
    assert ImagesSettings.from_env({"XDG_CACHE_HOME": "/cache"}).store_dir == "/cache/hubmesh/images"
    home_cache = os.path.join(os.path.expanduser("~"), ".cache", "hubmesh", "images")
    assert ImagesSettings.from_env({"XDG_CACHE_HOME": ""}).store_dir == home_cache
    assert ImagesSettings.from_env({"HUBMESH_IMAGES_STORE_DIR": "", "XDG_CACHE_HOME": "/c"}).store_dir == "/c/hubmesh/images"


FACADE_NAMES = {
    "host": "HUBMESH_HTTP_HOST",
    "port": "HUBMESH_HTTP_PORT",
    "api_keys": "HUBMESH_API_KEY",
    "jwt_secret": "HUBMESH_JWT_SECRET",
    "jwks": "HUBMESH_JWKS",
    "jwt_issuer": "HUBMESH_JWT_ISSUER",
    "jwt_audience": "HUBMESH_JWT_AUDIENCE",
    "jwt_leeway_s": "HUBMESH_JWT_LEEWAY_S",
    "jwks_refresh_s": "HUBMESH_JWKS_REFRESH_S",
    "jwt_default_scopes": "HUBMESH_JWT_DEFAULT_SCOPES",
    "rate_limit_rpm": "HUBMESH_RATE_LIMIT_RPM",
    "rate_limit_tpm": "HUBMESH_RATE_LIMIT_TPM",
    "budget_tokens_per_day": "HUBMESH_BUDGET_TOKENS_PER_DAY",
    "budget_tokens_per_month": "HUBMESH_BUDGET_TOKENS_PER_MONTH",
    "model_limits": "HUBMESH_MODEL_LIMITS",
    "limits_reserve_tokens": "HUBMESH_LIMITS_RESERVE_TOKENS",
    "redis_url": "HUBMESH_REDIS_URL",
    "limits_fail_mode": "HUBMESH_LIMITS_FAIL_MODE",
    "redis_timeout_s": "HUBMESH_REDIS_TIMEOUT_S",
    "redis_retry_s": "HUBMESH_REDIS_RETRY_S",
    "limits_local_max_keys": "HUBMESH_LIMITS_LOCAL_MAX_KEYS",
    "text_target": "HUBMESH_TEXT_TARGET",
    "text_links": "HUBMESH_TEXT_LINKS",
    "text_link_max_age_s": "HUBMESH_TEXT_LINK_MAX_AGE_S",
    "embeddings_target": "HUBMESH_EMBEDDINGS_TARGET",
    "images_target": "HUBMESH_IMAGES_TARGET",
    "internal_secret": "HUBMESH_INTERNAL_SECRET",
    "url_signing_key": "HUBMESH_URL_SIGNING_KEY",
    "public_url": "HUBMESH_PUBLIC_URL",
    "request_timeout_s": "HUBMESH_REQUEST_TIMEOUT_S",
    "max_body_bytes": "HUBMESH_MAX_BODY_BYTES",
    "sse_ping_s": "HUBMESH_SSE_PING_S",
    "max_in_flight": "HUBMESH_MAX_IN_FLIGHT",
    "grace_s": "HUBMESH_GRACE_S",
    "database_url": "HUBMESH_DATABASE_URL",
    "database_pool_size": "HUBMESH_DATABASE_POOL_SIZE",
    "responses_retention_s": "HUBMESH_RESPONSES_RETENTION_S",
    "responses_sweep_interval_s": "HUBMESH_RESPONSES_SWEEP_INTERVAL_S",
    "usage_flush_interval_s": "HUBMESH_USAGE_FLUSH_INTERVAL_S",
    "usage_buffer_records": "HUBMESH_USAGE_BUFFER_RECORDS",
    "usage_metric_subjects": "HUBMESH_USAGE_METRIC_SUBJECTS",
    "keys_refresh_s": "HUBMESH_KEYS_REFRESH_S",
    "keys_max_per_owner": "HUBMESH_KEYS_MAX_PER_OWNER",
    "model_aliases": "HUBMESH_MODEL_ALIASES",
    "model_alias_cooldown_s": "HUBMESH_MODEL_ALIAS_COOLDOWN_S",
}


def test_facade_names_and_defaults():
    assert FacadeSettings.env_names() == FACADE_NAMES
    s = FacadeSettings.from_env({})
    assert (s.host, s.port, s.api_keys, s.jwt_default_scopes) == ("127.0.0.1", 8080, (), ())
    assert (s.jwt_secret, s.jwks, s.jwt_issuer, s.jwt_audience, s.url_signing_key, s.public_url, s.internal_secret) == ("",) * 7
    assert (s.jwt_leeway_s, s.jwks_refresh_s, s.rate_limit_rpm, s.rate_limit_tpm) == (30.0, 300.0, 0, 0)
    assert (s.text_target, s.embeddings_target, s.images_target) == ("127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053")
    assert (s.request_timeout_s, s.max_body_bytes, s.sse_ping_s, s.max_in_flight, s.grace_s) == (600.0, 8388608, 15.0, 256, 10.0)
    assert (s.database_pool_size, s.responses_retention_s, s.responses_sweep_interval_s) == (10, 30 * 24 * 3600.0, 600.0)
    assert (s.usage_flush_interval_s, s.usage_buffer_records, s.usage_metric_subjects) == (1.0, 100_000, 50)


def test_facade_database_defaults_to_sqlite_in_the_xdg_cache():
    assert FacadeSettings.from_env({"XDG_CACHE_HOME": "/cache"}).database_url == "sqlite:////cache/hubmesh/hubmesh.db"
    home = os.path.join(os.path.expanduser("~"), ".cache", "hubmesh", "hubmesh.db")
    assert FacadeSettings.from_env({"HUBMESH_DATABASE_URL": ""}).database_url == "sqlite:///" + home
    url = "postgresql://hubmesh:pw@db:5432/hubmesh"
    settings = FacadeSettings.from_env({"HUBMESH_DATABASE_URL": url})
    assert settings.database_url == url and "pw" not in repr(settings)


def test_facade_reads_its_variables():
    s = FacadeSettings.from_env({
        "HUBMESH_HTTP_HOST": "0.0.0.0", "HUBMESH_HTTP_PORT": "9000", "HUBMESH_JWT_SECRET": "s",
        "HUBMESH_RATE_LIMIT_RPM": "60", "HUBMESH_MAX_IN_FLIGHT": "0", "HUBMESH_IMAGES_TARGET": "dns:///images:50053",
    })
    assert (s.host, s.port, s.jwt_secret, s.rate_limit_rpm, s.max_in_flight) == ("0.0.0.0", 9000, "s", 60, 0)
    assert s.images_target == "dns:///images:50053"


# -- lists, URLs, no environment outside from_env ------------------------------------------------


def test_api_keys_are_a_comma_separated_list():
    assert FacadeSettings.from_env({"HUBMESH_API_KEY": " k1, ,k2 ,,"}).api_keys == ("k1", "k2")
    assert FacadeSettings.from_env({"HUBMESH_API_KEY": "only"}).api_keys == ("only",)
    assert FacadeSettings.from_env({"HUBMESH_API_KEY": ""}).api_keys == ()
    assert FacadeSettings(api_keys=("a", "b")).api_keys == ("a", "b")


def test_default_scopes_are_space_or_comma_separated():
    env = {"HUBMESH_JWT_DEFAULT_SCOPES": "models chat,embeddings ,  hubmesh:images"}
    assert FacadeSettings.from_env(env).jwt_default_scopes == ("models", "chat", "embeddings", "hubmesh:images")
    assert FacadeSettings.from_env({"HUBMESH_JWT_DEFAULT_SCOPES": " "}).jwt_default_scopes == ()


def test_public_url_loses_its_trailing_slash():
    assert FacadeSettings.from_env({"HUBMESH_PUBLIC_URL": "https://ai.example.com/"}).public_url == "https://ai.example.com"


def test_constructing_settings_never_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("HUBMESH_TEXT_TARGET", "elsewhere:1")
    monkeypatch.setenv("HUBMESH_TEXT_LISTEN", "elsewhere:2")
    monkeypatch.setenv("HUBMESH_MAX_IN_FLIGHT", "abc")
    assert FacadeSettings(api_keys=("k",)).text_target == "127.0.0.1:50051"
    assert TextSettings().listen == "127.0.0.1:50051"
    assert ServeOptions().max_in_flight == 64
    monkeypatch.delenv("HUBMESH_MAX_IN_FLIGHT")
    assert FacadeSettings.from_env().text_target == "elsewhere:1"  # from_env defaults to os.environ


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        TextSettings.from_env({}).listen = "x"  # type: ignore[misc]


# -- bad values ------------------------------------------------------------------------------------


def test_a_bad_value_names_the_variable():
    with pytest.raises(SettingsError) as err:
        ServeOptions.from_env({"HUBMESH_MAX_IN_FLIGHT": "abc"})
    assert str(err.value).startswith("HUBMESH_MAX_IN_FLIGHT='abc': Input should be a valid integer")
    with pytest.raises(SettingsError, match=r"^HUBMESH_IMAGES_TTL_S='-1': Input should be greater than 0$"):
        ImagesSettings.from_env({"HUBMESH_IMAGES_TTL_S": "-1"})
    with pytest.raises(SettingsError, match=r"^HUBMESH_HTTP_PORT='70000': Input should be less than or equal to 65535$"):
        FacadeSettings.from_env({"HUBMESH_HTTP_PORT": "70000"})


def test_every_bad_value_is_named_in_one_line():
    with pytest.raises(SettingsError) as err:
        EmbeddingsSettings.from_env({"HUBMESH_EMBEDDINGS_CHUNK_SIZE": "0", "HUBMESH_EMBEDDINGS_TRITON_TIMEOUT_S": "soon"})
    message = str(err.value)
    assert "\n" not in message
    assert "HUBMESH_EMBEDDINGS_CHUNK_SIZE='0'" in message and "HUBMESH_EMBEDDINGS_TRITON_TIMEOUT_S='soon'" in message


def test_settings_or_exit_prints_one_line_and_exits_1(capsys):
    with pytest.raises(SystemExit) as exit_:
        settings_or_exit(ServeOptions, {"HUBMESH_GRACE_S": "ten"})
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bad settings: HUBMESH_GRACE_S='ten': ")


@pytest.mark.parametrize(
    "module, variable, value, expected",
    [
        ("services.text", "HUBMESH_MAX_IN_FLIGHT", "abc", "bad settings: HUBMESH_MAX_IN_FLIGHT='abc': Input should be a valid integer"),
        ("services.embeddings", "HUBMESH_EMBEDDINGS_CATALOG", "/nonexistent/catalog.toml",
         "bad catalogue: /nonexistent/catalog.toml: cannot read the catalogue: No such file or directory"),
        ("facade", "HUBMESH_HTTP_PORT", "http", "bad settings: HUBMESH_HTTP_PORT='http': Input should be a valid integer"),
    ],
)
def test_a_process_with_a_bad_setting_stops_with_one_line(module, variable, value, expected):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBMESH_", "OTEL_", "PYTHONPATH"))}
    env.update({variable: value})  # no PYTHONPATH: the venv imports the project by itself
    proc = subprocess.run([sys.executable, "-m", module], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr
