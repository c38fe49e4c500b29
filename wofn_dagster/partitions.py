"""Prompt batches: the dynamic partitions of `prompts`, `candidates` and `candidate_scores`.

A batch is one prompt file. Its key is the file name without suffix (`wofn.paths.batch_key`):

- every `.parquet` / `.jsonl` file in `$WOFN_HOME/inbox/` is a batch; the `prompt_inbox` sensor
  registers new ones and samples and scores them;
- the `unlabeled_prompts` setting (the profile's prompt file) is a batch too, registered by
  `python -m wofn_dagster.partitions register-profile` (`make run` does this first). Where an inbox
  file has the same key, the inbox file is the batch.

    python -m wofn_dagster.partitions register-profile   # register the profile's batch; print its key
    python -m wofn_dagster.partitions list               # the registered batches
"""

import argparse
import sys
from pathlib import Path

from dagster import DagsterInstance, DynamicPartitionsDefinition

from wofn.paths import PROMPT_FILE_SUFFIXES, WofnHome, batch_key
from wofn_dagster.resources import WofnSettings

prompt_batches = DynamicPartitionsDefinition(name="prompt_batches")


def inbox_files(home: WofnHome) -> dict[str, Path]:
    """{batch key: file} of the prompt files in the inbox (hidden and partial files are skipped)."""
    files: dict[str, Path] = {}
    if not home.inbox_dir.is_dir():
        return files
    for path in sorted(home.inbox_dir.iterdir()):
        if path.is_file() and path.suffix in PROMPT_FILE_SUFFIXES and not path.name.startswith("."):
            files.setdefault(batch_key(path), path)  # a.jsonl beside a.parquet: the first name in order
    return files


def batch_source(home: WofnHome, unlabeled_prompts: str, key: str) -> Path:
    """The prompt file of batch `key`: the inbox file with that key, else the profile's prompt file."""
    inbox = inbox_files(home)
    if key in inbox:
        return inbox[key]
    if batch_key(unlabeled_prompts) == key:
        return Path(unlabeled_prompts)
    raise FileNotFoundError(
        f"prompt batch {key!r} has no file: not in {home.inbox_dir} (as {key}.parquet or {key}.jsonl), "
        f"and the unlabeled_prompts setting ({unlabeled_prompts}) is batch {batch_key(unlabeled_prompts)!r}")


def register(instance: DagsterInstance, keys: list[str]) -> list[str]:
    """Add the batches not yet registered; return those added."""
    new = [k for k in dict.fromkeys(keys) if not instance.has_dynamic_partition(prompt_batches.name, k)]
    if new:
        instance.add_dynamic_partitions(prompt_batches.name, new)
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wofn_dagster.partitions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["register-profile", "list"])
    args = parser.parse_args(argv)
    instance = DagsterInstance.get()  # $DAGSTER_HOME
    if args.command == "register-profile":
        key = batch_key(WofnSettings.from_profile().unlabeled_prompts)
        register(instance, [key])
        print(key)
    else:
        print("\n".join(instance.get_dynamic_partitions(prompt_batches.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
