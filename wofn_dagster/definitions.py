"""The one Definitions object: assets by stage, resources from the active profile and environment."""

import os

from dagster import Definitions, load_assets_from_modules, multiprocess_executor

from wofn_dagster.assets import data, evaluations, generation, pairs, rounds, training
from wofn_dagster.resources import BeamRunnerResource, WofnHomeResource, WofnSettings

defs = Definitions(
    assets=load_assets_from_modules([data, generation, pairs, training, rounds, evaluations]),
    resources={
        "settings": WofnSettings.from_profile(),
        "home": WofnHomeResource(root=os.environ.get("WOFN_HOME", ".wofn")),
        "beam_runner": BeamRunnerResource(runner=os.environ.get("WOFN_BEAM_RUNNER", "DirectRunner")),
    },
    # One step at a time, each in its own process using every core: on a 2-core machine this
    # beat overlapping base-RM training with sampling at one thread each (measured: README).
    # Raise max_concurrent in the run config where steps run on separate devices.
    executor=multiprocess_executor.configured({"max_concurrent": 1}),
)
