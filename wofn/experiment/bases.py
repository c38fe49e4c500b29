"""Train and evaluate only the base reward models of an experiment (its grid's seeds, or `--seeds`):
measure a teacher before paying for students. Each base is stored and reused exactly as
`wofn experiment` does (`$WOFN_HOME/experiments/<name>/base/seed=<s>/`), so a later full run of
the same config starts from them.

    python -m wofn.experiment.bases CONFIG [--seeds 0 1] [--home DIR]

One JSON line per base: its accuracy, length-balanced accuracy and mean margin on the evaluation
pairs (and on the `human_holdout` pairs when the config holds some out), and its training seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from wofn.experiment import config as experiment_config
from wofn.experiment.runner import Experiment
from wofn.paths import WofnHome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wofn.experiment.bases", description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the grid's seeds")
    parser.add_argument("--home", default=None, help="data root (default $WOFN_HOME or .wofn)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = experiment_config.load(args.config)
    exp = Experiment(cfg, Path(args.home) if args.home else WofnHome.from_env().root)
    for seed in args.seeds or list(cfg.seeds):
        result = exp.base(seed)
        summary = {k: result[k] for k in ("seed", "accuracy", "length_balanced_accuracy", "mean_margin",
                                            "train_seconds") if k in result}
        if "holdout" in result:
            summary["holdout"] = {k: result["holdout"][k] for k in ("accuracy", "length_balanced_accuracy",
                                                                    "mean_margin")}
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
