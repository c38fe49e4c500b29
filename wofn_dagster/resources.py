"""Resources: where files land, the policy, the reward models, how Beam runs, the DuckDB catalog,
and the pipeline's settings.

The fields of `settings`, `policy` and `reward_models` are the settings of wofn/settings.py (their
types and help text come from there; docs/settings.md lists them), with the active profile's values
(`WOFN_PROFILE`, `wofn/profiles.py`). Where an environment variable is set, the field is bound to it
as a Dagster `EnvVar` (read when a run starts, and shown as such in the UI): the variables the
settings name (e.g. WOFN_POLICY for policy.model), and

    WOFN_HOME             home.root, and the catalog duckdb.database ($WOFN_HOME/wofn.duckdb)
    WOFN_BEAM_RUNNER      beam_runner.runner      WOFN_BEAM_OPTIONS    beam_runner.pipeline_options
                                                  (one string, split like a shell command line)
"""

import os
import shlex
import typing
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, EnvVar
from dagster_duckdb import DuckDBResource
from pydantic import Field, model_validator

from wofn import catalog, profiles
from wofn import settings as settings_model
from wofn.paths import WofnHome
from wofn.settings import Settings


class WofnHomeResource(ConfigurableResource):
    """The data root: tables, models and the DuckDB catalog live under it."""

    root: str = Field(description="folder for tables/, models/ and wofn.duckdb ($WOFN_HOME, default .wofn)")

    @property
    def home(self) -> WofnHome:
        return WofnHome(Path(self.root).resolve())


class BeamRunnerResource(ConfigurableResource):
    """How the Beam jobs run: runner name and extra pipeline options."""

    runner: str = Field(default="DirectRunner",
                        description="Beam runner, e.g. DirectRunner, DaskRunner, DataflowRunner")
    pipeline_options: list[str] = Field(
        default_factory=list,
        description="extra Beam options, e.g. ['--direct_running_mode=multi_processing', '--direct_num_workers=2']",
    )

    def args(self) -> list[str]:
        return [f"--runner={self.runner}", *self.pipeline_options]


def _owner(name: str) -> str:
    """The resource that holds setting `name`: policy, reward_models or settings."""
    for resource in ("policy", "reward_models"):
        if name in settings_model.owned_by(resource):
            return resource
    return "settings"


def _fields_of(resource: str) -> dict[str, str]:
    """Setting name -> field name, for each setting `resource` holds."""
    owned = settings_model.owned_by(resource)
    return {name: owned[name][0] if name in owned else name
            for name in settings_model.names() if _owner(name) == resource}


class _SettingsResource(ConfigurableResource):
    """A resource whose fields are settings: each is checked as its setting (type and range; the
    rules between settings are checked when the assets build the run's Settings, `run_settings`)."""

    @model_validator(mode="before")
    @classmethod
    def _check_fields(cls, values):
        if isinstance(values, dict):
            for name, field_name in _fields_of(_RESOURCE_OF[cls.__name__]).items():
                value = values.get(field_name)
                if field_name in values and not isinstance(value, (EnvVar, dict)):
                    # an EnvVar is read when a run starts, and checked then (run_settings)
                    settings_model.check_value(name, value)
        return values


def _with_setting_fields(base: type, name: str, resource: str) -> type:
    """`base` with one field per setting `resource` holds: the setting's type and help text
    (wofn/settings.py), and the environment variable it reads."""
    namespace: dict = {"__module__": __name__, "__doc__": base.__doc__, "__annotations__": {}}
    for setting, field_name in _fields_of(resource).items():
        tp = settings_model.type_of(setting)
        if typing.get_origin(tp) is tuple:  # Dagster config has lists, not tuples
            tp = list[str]
        env = settings_model.owned_by(resource).get(setting, (None, None))[1]
        namespace["__annotations__"][field_name] = tp
        namespace[field_name] = Field(description=settings_model.setting_help(setting) + (f" (${env})" if env else ""))
    _RESOURCE_OF[name] = resource
    return type(name, (base,), namespace)


_RESOURCE_OF: dict[str, str] = {}


class _Policy(_SettingsResource):
    """The policy LM that samples the N candidates of each prompt."""


class _RewardModels(_SettingsResource):
    """The reward models: the backbone base and students start from, the teacher kind, how candidates are scored."""


class _Settings(_SettingsResource):
    """Everything else a West-of-N run is made of (wofn/settings.py, docs/settings.md). Defaults come
    from the active profile ($WOFN_PROFILE)."""

    profile: str = Field(description="name of the preset these defaults came from")

    @classmethod
    def from_profile(cls, name: Optional[str] = None, **overrides) -> "WofnSettings":
        """The profile's settings (default: the active one), with `overrides`; settings other resources hold are
        ignored."""
        name, values = profiles.active() if name is None else (name, profiles.get(name))
        values = settings_model.with_overrides(values, overrides).as_dict()
        return cls(profile=name, **{k: v for k, v in values.items() if _owner(k) == "settings"})

    def threads(self) -> int:
        return run_settings(self).threads()


PolicyResource = _with_setting_fields(_Policy, "PolicyResource", "policy")
RewardModelResource = _with_setting_fields(_RewardModels, "RewardModelResource", "reward_models")
WofnSettings = _with_setting_fields(_Settings, "WofnSettings", "settings")


def run_settings(settings: WofnSettings, policy: Optional[PolicyResource] = None,
                 reward_models: Optional[RewardModelResource] = None) -> Settings:
    """The run's `Settings` (what the core's stages take, `wofn.stages`), checked with every rule
    between settings: the `settings` resource's fields, with the policy's and reward models' taken
    from those resources when given (else the profile's)."""
    values = {name: getattr(settings, name) for name in type(settings).model_fields if name != "profile"}
    for resource, owner in (("policy", policy), ("reward_models", reward_models)):
        if owner is not None:
            values.update({name: getattr(owner, field) for name, field in _fields_of(resource).items()})
    # a profile name of your own (not a wofn preset) takes the default profile's for what is not given
    return profiles.PROFILES.get(settings.profile, profiles.DEFAULT).replace(**values)


def _env_or(name: Optional[str], default):
    """The field bound to environment variable `name` when it is set (a Dagster EnvVar), else `default`."""
    return EnvVar(name) if name and os.environ.get(name) else default


def wofn_resources(home: Optional[str] = None, profile: Optional[str] = None, **overrides) -> dict:
    """Every resource of the pipeline, from the profile (default: $WOFN_PROFILE), the environment
    and `overrides` (setting names, e.g. teacher="pairwise"; an override wins over the environment).
    A pairwise teacher (override or $WOFN_TEACHER) sets length_control "none" unless it is overridden too.

    `home` defaults to $WOFN_HOME, else `.wofn`; the DuckDB catalog is `<home>/wofn.duckdb`.
    """
    root = str(Path(home or os.environ.get("WOFN_HOME", ".wofn")).resolve())
    name, base = profiles.active() if profile is None else (profile, profiles.get(profile))
    teacher = overrides.get("teacher") or os.environ.get("WOFN_TEACHER") or base.teacher
    values = settings_model.with_overrides(base, {**overrides, "teacher": teacher}).as_dict()
    owned: dict[str, dict] = {}
    for resource in ("policy", "reward_models"):
        owned[resource] = {field: values[name] if name in overrides else _env_or(env, values[name])
                           for name, (field, env) in settings_model.owned_by(resource).items()}
    options = os.environ.get("WOFN_BEAM_OPTIONS")
    return {
        "settings": WofnSettings(profile=name, **{k: v for k, v in values.items() if _owner(k) == "settings"}),
        "home": WofnHomeResource(root=root),
        "policy": PolicyResource(**owned["policy"]),
        "reward_models": RewardModelResource(**owned["reward_models"]),
        "beam_runner": BeamRunnerResource(runner=_env_or("WOFN_BEAM_RUNNER", "DirectRunner"),
                                          pipeline_options=shlex.split(options) if options else []),
        # the catalog's storage format, as wofn.catalog writes it (DuckDB 1.x tools read it)
        "duckdb": DuckDBResource(database=str(Path(root) / "wofn.duckdb"), connection_config=dict(catalog.STORAGE)),
    }
