"""The one Definitions object: assets by stage, resources from the active profile and environment."""

import os

from dagster import Definitions, load_assets_from_modules, multiprocess_executor

from wofn_dagster.assets import data, generation, pairs, training
from wofn_dagster.resources import BeamRunnerResource, WofnHomeResource, WofnSettings

defs = Definitions(
    assets=load_assets_from_modules([data, generation, pairs, training]),
    resources={
        "settings": WofnSettings.from_profile(),
        "home": WofnHomeResource(root=os.environ.get("WOFN_HOME", ".wofn")),
        "beam_runner": BeamRunnerResource(runner=os.environ.get("WOFN_BEAM_RUNNER", "DirectRunner")),
    },
    # Two steps at a time: on a small machine, base-RM training and sampling overlap.
    executor=multiprocess_executor.configured({"max_concurrent": 2}),
)
