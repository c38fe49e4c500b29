"""A stopped experiment, carried to another machine: what it has finished, without the model weights.

A long experiment (hours of CPU) may outlive the machine it started on. `save` packs the run's folder
(`$WOFN_HOME/experiments/<name>/`) into one .tar.gz that holds everything its finished steps wrote
except what no later step reads: the model weights (`*.safetensors`) of base RMs that are evaluated
(their result.json holds the margins the report needs) and the students (each cells/<id>.json holds its
result). `restore` unpacks it into another home, and `wofn experiment` then resumes there as it would on
the first machine. What the archive leaves out:

- a teacher member's base RM while the teacher's scores are not written yet (the scoring job loads its
  weights): it is trained again after a restore;
- the candidates while sampling is unfinished (sampled.json absent): sampled again;
- the students being trained, and every hidden (staging, temporary) file: redone, as after a stop.

    wofn experiment CONFIG --save-state run.tar.gz      # pack what is finished (the run may go on)
    wofn experiment CONFIG --restore-state run.tar.gz   # unpack into --home / $WOFN_HOME, then resume
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from wofn.experiment.runner import EVAL_FILE, Experiment
from wofn.paths import staging_dir

MANIFEST = "wofn_experiment_state.json"
WEIGHTS = (".safetensors",)


class StateError(ValueError):
    """An archive that does not belong to this experiment, or that is not a wofn experiment state."""


def _left_out(exp: Experiment) -> dict[str, str]:
    """Top-level parts of the run's folder that the archive skips, with why."""
    skip = {"students": "students are redone unless their cells/<id>.json is written"}
    if not exp.path("sampled.json").exists():
        for part in ("candidates", "candidate_errors"):
            skip[part] = "sampling is not finished: it runs again"
    return skip


def members(exp: Experiment) -> tuple[list[Path], list[str]]:
    """The files to archive (relative to the run's folder) and a note per part left out."""
    root = exp.root
    skip = _left_out(exp)
    notes = [f"{part}/: {why}" for part, why in skip.items() if (root / part).exists()]
    scored = exp.path("scores").exists()
    bases_out = set()
    for seed_dir in sorted(root.glob("base/seed=*")):
        seed = int(seed_dir.name.split("=", 1)[1])
        if not (seed_dir / EVAL_FILE).exists():
            bases_out.add(seed_dir)
            notes.append(f"base/{seed_dir.name}/: not evaluated yet: trained again")
        elif not scored and seed in exp.teacher_seeds():
            bases_out.add(seed_dir)
            notes.append(f"base/{seed_dir.name}/: a teacher member before scoring (its weights are needed): "
                         "trained again")
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.parts[0] in skip or any(seed_dir in path.parents for seed_dir in bases_out):
            continue
        if path.name.endswith(WEIGHTS):
            continue
        files.append(rel)
    return files, notes


def save(exp: Experiment, archive: Path) -> dict:
    """Write the finished part of the run to `archive` (.tar.gz); returns its manifest."""
    files, notes = members(exp)
    if not files:
        raise StateError(f"{exp.root}: nothing to save (the experiment has not started here)")
    manifest = {"experiment": exp.config.name, "config": exp.config.digest, "files": len(files),
                "left_out": notes, "weights_left_out": True}
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        body = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for rel in files:
            tar.add(exp.root / rel, arcname=rel.as_posix(), recursive=False)
    tmp.replace(archive)
    return manifest


def restore(exp: Experiment, archive: Path) -> dict:
    """Unpack `archive` into the run's folder; files already there are kept (they are newer or equal), and
    a folder it lacks comes in whole.
    Returns the archive's manifest with the counts of files restored and kept."""
    archive = Path(archive)
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise StateError(f"{archive}: not a wofn experiment state (.tar.gz): {exc}") from exc
    with tar:
        try:
            manifest = json.loads(tar.extractfile(MANIFEST).read())
        except (KeyError, AttributeError, ValueError) as exc:
            raise StateError(f"{archive}: no {MANIFEST} in it: not saved by `wofn experiment --save-state`") from exc
        if manifest["experiment"] != exp.config.name:
            raise StateError(f"{archive}: the state of experiment {manifest['experiment']!r}, "
                             f"not {exp.config.name!r}")
        for info in tar.getmembers():
            rel = PurePosixPath(info.name)
            if not info.isfile() or rel.is_absolute() or ".." in rel.parts:
                raise StateError(f"{archive}: unexpected member {info.name!r}")
        # whole into a hidden sibling first, then moved in by folders: a stopped restore never leaves a
        # half-filled folder that a resumed run would take as a finished step
        staging = staging_dir(exp.root)
        tar.extractall(staging, filter="data")
    (staging / MANIFEST).unlink()
    counts = {"restored": 0, "kept": 0}
    _merge(staging, exp.root, counts)
    shutil.rmtree(staging, ignore_errors=True)
    return {**manifest, **counts, "same_config": manifest["config"] == exp.config.digest}


def _merge(src: Path, dst: Path, counts: dict) -> None:
    """Move what `dst` lacks from `src`, a folder at a time where `dst` has none; keep what it has."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        target = dst / path.name
        if path.is_dir() and target.is_dir():
            _merge(path, target, counts)
            continue
        files = sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else 1
        if target.exists():
            counts["kept"] += files
        else:
            path.rename(target)
            counts["restored"] += files
