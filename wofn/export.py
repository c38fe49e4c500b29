"""`wofn export`: synthetic pairs as files that preference-training tools read.

TRL's preference format (https://huggingface.co/docs/trl/dataset_formats) has the columns
`prompt`, `chosen`, `rejected`:

  * `trl` (standard): text. `prompt` is the HH transcript ending in "\\n\\nAssistant:", and
    `chosen` / `rejected` are " " + the response, so `prompt + chosen` is exactly the text
    wofn's reward models score (wofn.rm_format.rm_text).
  * `trl-conversational`: message lists. `prompt` is the conversation as
    [{"role": "user" | "assistant", "content": ...}] (wofn.generation.prompt_to_messages, as the
    policy saw it), and `chosen` / `rejected` are one assistant message each.

Both keep wofn's measurements (margin, confidence, a teacher ensemble's agreement, rewards,
log-probabilities, lengths) and the
pairs' provenance (policy, teacher, round, strategy, seed) as extra columns, and are written as
Parquet or JSONL (by the output's suffix) atomically: a temporary file in the same folder, then
a rename. An existing output is replaced only when asked (`force`).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wofn import schemas
from wofn.paths import WofnHome

FORMATS = {"trl": schemas.TRL_PAIRS, "trl-conversational": schemas.TRL_CONVERSATIONAL_PAIRS}
PAIR_TABLES = ("filtered_pairs", "west_of_n_pairs")
SUFFIXES = (".parquet", ".jsonl")


class ExportError(ValueError):
    """The export cannot be done as asked; the message names what to change."""


def tables_dir(home: WofnHome, round_k: int) -> Path:
    """The folder holding round `round_k`'s tables (round 1: the main assets')."""
    if round_k < 1:
        raise ExportError(f"--round must be >= 1, got {round_k}")
    return home.root / "tables" if round_k == 1 else home.round_dir(round_k)


def read_pairs(home: WofnHome, table: str, round_k: int) -> pa.Table:
    if table not in PAIR_TABLES:
        raise ExportError(f"unknown pair table {table!r}; expected one of {', '.join(PAIR_TABLES)}")
    folder = tables_dir(home, round_k) / table
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise ExportError(f"no Parquet files in {folder}: materialize {table} (round {round_k}) first, "
                          "or point --home / WOFN_HOME at the run")
    return schemas.conform(pa.concat_tables(pq.read_table(f) for f in files), schemas.PAIRS, where=str(folder))


def provenance(home: WofnHome, round_k: int, strategy: str | None = None, seed: int | None = None
               ) -> tuple[str, int | None]:
    """The strategy and seed that selected round `round_k`'s pairs, from its pair_selection_report.

    `strategy` / `seed` state them where the report is missing (tables of an older wofn, or rounds
    >= 2, whose asset does not write one); where it exists they must agree with it.
    """
    folder = tables_dir(home, round_k) / "pair_selection_report"
    files = sorted(folder.glob("*.parquet"))
    if not files:
        if strategy is None:
            raise ExportError(
                f"no pair_selection_report in {folder.parent}, so the strategy that selected these pairs is not "
                "recorded (tables of an older wofn, or round >= 2); rematerialize west_of_n_pairs, or state it "
                "with --strategy NAME [--seed N]")
        if strategy not in schemas.STRATEGIES:
            raise ExportError(f"--strategy must be one of {', '.join(schemas.STRATEGIES)}, got {strategy!r}")
        if (seed is None) != (strategy == "west_of_n"):
            raise ExportError(f"--seed is {'required' if seed is None else 'meaningless'} for strategy {strategy!r}")
        return strategy, seed
    report = pa.concat_tables(pq.read_table(f) for f in files).to_pylist()
    selected = {(r["strategy"], r["pair_seed"]) for r in report if r["selected"]}
    if len(selected) != 1:
        raise ExportError(f"{folder}: expected one selected strategy, found {sorted(selected, key=str)}")
    recorded = selected.pop()
    if strategy is not None and (strategy, seed) != recorded:
        raise ExportError(f"--strategy {strategy} --seed {seed} disagree with {folder}, which records "
                          f"strategy {recorded[0]} with seed {recorded[1]}")
    return recorded


def to_trl(pairs: pa.Table, fmt: str, round_k: int, strategy: str, seed: int | None) -> pa.Table:
    """`pairs` (wofn.schemas.PAIRS) in TRL's preference format `fmt` (a key of FORMATS)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    rows = pairs.to_pylist()
    if fmt == "trl":
        prompts = [r["prompt"] for r in rows]
        chosen = [" " + r["chosen"].strip() for r in rows]
        rejected = [" " + r["rejected"].strip() for r in rows]
    else:
        from wofn.generation import prompt_to_messages  # imports torch; only this format needs it

        prompts = [prompt_to_messages(r["prompt"]) for r in rows]
        chosen = [[{"role": "assistant", "content": r["chosen"].strip()}] for r in rows]
        rejected = [[{"role": "assistant", "content": r["rejected"].strip()}] for r in rows]
    columns = {"prompt": prompts, "chosen": chosen, "rejected": rejected}
    for name in ("prompt_id", "margin", "confidence", "chosen_reward", "rejected_reward", "chosen_logprob_sum",
                 "rejected_logprob_sum", "chosen_logprob_mean", "rejected_logprob_mean", "chosen_num_tokens",
                 "rejected_num_tokens", "policy"):
        columns[name] = pairs.column(name).to_pylist()
    columns["teacher"] = pairs.column("reward_model").to_pylist()
    columns["round"] = [round_k] * len(rows)
    columns["strategy"] = [strategy] * len(rows)
    columns["seed"] = [seed] * len(rows)
    columns["agreement"] = pairs.column("agreement").to_pylist()
    return pa.Table.from_pydict(columns, schema=FORMATS[fmt])


def write(table: pa.Table, output: Path, force: bool = False) -> Path:
    """Write `table` to `output` (.parquet or .jsonl) atomically; refuse to replace a file unless `force`."""
    output = Path(output)
    if output.suffix not in SUFFIXES:
        raise ExportError(f"output {output} must end in .parquet or .jsonl")
    if output.is_dir():
        raise ExportError(f"output {output} is a folder; name a file")
    if output.exists() and not force:
        raise ExportError(f"{output} exists; pass --force to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if output.suffix == ".parquet":
            pq.write_table(table, tmp)
        else:
            with tmp.open("w", encoding="utf-8") as fh:
                for row in table.to_pylist():
                    fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return output


def export_pairs(home: WofnHome, output: Path, table: str = "filtered_pairs", round_k: int = 1,
                 fmt: str = "trl", force: bool = False, strategy: str | None = None,
                 seed: int | None = None) -> dict:
    """Export one pair table of a run; returns what was written."""
    if fmt not in FORMATS:  # before reading anything
        raise ExportError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if Path(output).suffix not in SUFFIXES:
        raise ExportError(f"output {output} must end in .parquet or .jsonl")
    if Path(output).exists() and not force:
        raise ExportError(f"{output} exists; pass --force to replace it")
    pairs = read_pairs(home, table, round_k)
    strategy, seed = provenance(home, round_k, strategy, seed)
    path = write(to_trl(pairs, fmt, round_k, strategy, seed), Path(output), force)
    return {"output": str(path), "rows": pairs.num_rows, "format": fmt, "table": table, "round": round_k,
            "strategy": strategy, "seed": seed}
