"""Settings from environment variables (pydantic-settings), parsed once at each entry point.

`Settings.from_env(env)` is the only place a settings class reads the environment, and it reads
the mapping it is given (os.environ by default), so tests pass their own. A plain `Settings(...)`
takes its keyword arguments and the defaults, never the process environment.

A bad value is a SettingsError naming the variable; `settings_or_exit` turns it into one line on
stderr and exit status 1 at start-up (no traceback).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

S = TypeVar("S", bound="EnvSettings")

# Types shared by the settings classes.
Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0)]  # a timeout or an interval
NonNegativeSeconds = Annotated[float, Field(ge=0)]


class SettingsError(ValueError):
    """Environment variables that do not parse; the message names each one and why."""


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over an explicit mapping instead of os.environ.

    Values go to validation as the strings they are: lists are comma/space separated text that
    the fields' validators split (pydantic-settings would expect JSON).
    """

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.case_sensitive:
            return dict(self._env)
        return {name.lower(): value for name, value in self._env.items()}

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool) -> Any:
        return value


class EnvSettings(BaseSettings):
    """Base of every settings class: frozen, env names from `env_prefix` + field name (or the
    field's `validation_alias`), unknown variables ignored (all processes share one environment)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Settings(...) never reads os.environ (nor .env files): from_env is the only door.
        return (init_settings,)

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] = os.environ) -> S:
        """The settings `env` gives; SettingsError naming each variable whose value is bad."""
        values = _MappingEnvSource(cls, env)()
        try:
            return cls(**values)
        except ValidationError as err:
            raise SettingsError(_describe(cls, err)) from None

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> the environment variable it is read from."""
        prefix = cls.model_config.get("env_prefix", "")
        return {
            name: field.validation_alias if isinstance(field.validation_alias, str) else (prefix + name).upper()
            for name, field in cls.model_fields.items()
        }


def _describe(cls: type[EnvSettings], err: ValidationError) -> str:
    """ "HUBMESH_MAX_IN_FLIGHT='abc': Input should be a valid integer, ...; HUBMESH_...: ..." """
    names = cls.env_names()
    problems = []
    for error in err.errors(include_url=False):
        key = str(error["loc"][0]) if error["loc"] else ""
        variable = names.get(key, key)  # a field name, or already the variable (an alias)
        shown = isinstance(error["input"], str) and not any(word in variable for word in _SECRET_WORDS)
        problems.append(f"{variable}={error['input']!r}: {error['msg']}" if shown else f"{variable}: {error['msg']}")
    return "; ".join(problems)


_SECRET_WORDS = ("SECRET", "KEY", "JWKS")  # their values never go into a message


def settings_or_exit(settings_type: type[S], env: Mapping[str, str] = os.environ) -> S:
    """`settings_type.from_env(env)`, or exit status 1 with one line saying which variable is bad."""
    try:
        return settings_type.from_env(env)
    except SettingsError as err:
        print(f"bad settings: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def split_list(value: Any) -> Any:
    """ "a, b c" -> ("a", "b", "c"): comma- and/or space-separated names, empty ones dropped."""
    if isinstance(value, str):
        return tuple(part for part in value.replace(",", " ").split() if part)
    return value


class ServiceSettings(EnvSettings):
    """What every modality service is told: where to listen, which Tritons to call, which models.

    Each service sets `env_prefix` (HUBMESH_TEXT_, ...) and redeclares the first four fields with its defaults.
    """

    # host:port of the gRPC server
    listen: str
    # Triton replicas, comma-separated: host:port[:metrics_port] each, or dns:///host:port for every
    # address a name resolves to (a headless Kubernetes Service); see services.common.replicas
    triton_url: str
    # the TOML catalogue of served models (a relative path is relative to the working directory)
    catalog: Path
    # longest one Triton call may take (less when the caller's deadline is nearer)
    triton_timeout_s: Seconds
    # Triton's metrics port on replicas named without one (dns:/// targets included); 0: not scraped
    triton_metrics_port: Port = 8002
    # how often each replica is asked which models are ready (an ejected one comes back on a good answer)
    triton_probe_interval_s: Seconds = 1.0
    # how often dns:/// targets are resolved again
    triton_resolve_interval_s: Seconds = 10.0

    @field_validator("triton_url")
    @classmethod
    def _targets_parse(cls, value: str) -> str:
        from services.common.replicas import parse_targets

        parse_targets(value)  # ValueError names the bad entry
        return value

    def replica_options(self) -> dict:
        """Keyword arguments of services.common.replicas.ReplicaSet."""
        return {"probe_interval_s": self.triton_probe_interval_s, "resolve_interval_s": self.triton_resolve_interval_s}
