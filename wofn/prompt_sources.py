"""Where D_U's prompts come from: the unlabeled prompt file, the prompts of the human training pairs,
and the earlier turns of multi-turn conversations from either, deduplicated by prompt_id.

    unlabeled      the prompt file (wofn.data.read_prompts), sources as the file gives them
    human_pairs    the prompts of the human training pairs (wofn.data.load_preferences), source "human_pairs"
    earlier_turns  every earlier prefix of those prompts cut just after an "\\n\\nAssistant:" turn
                   boundary, source "earlier_turn:unlabeled" or "earlier_turn:human_pairs"

The first occurrence of a prompt_id wins, in the order above. A prompt of the evaluation pairs is
left out of every source (a leak guard) and counted.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from wofn import data, schemas

PROMPT_SOURCES = ("unlabeled", "human_pairs", "earlier_turns")
_ASSISTANT = "\n\nAssistant:"


def check_prompt_sources(sources) -> tuple[str, ...]:
    """`sources` as a tuple, or ValueError naming the `prompt_sources` setting and its allowed values."""
    sources = tuple(sources)
    unknown = [s for s in sources if s not in PROMPT_SOURCES]
    if unknown or not sources:
        raise ValueError(f"prompt_sources must be a non-empty list of {', '.join(PROMPT_SOURCES)}; "
                         f"got {list(sources)!r}" + (f" (unknown: {unknown})" if unknown else ""))
    if set(sources) == {"earlier_turns"}:
        raise ValueError("prompt_sources: 'earlier_turns' cuts the prompts of 'unlabeled' or 'human_pairs'; "
                         "add one of them (e.g. ['unlabeled', 'earlier_turns'])")
    return sources


def earlier_turn_prefixes(prompt: str) -> list[str]:
    """Each prefix of `prompt` that ends just after an "\\n\\nAssistant:" followed by more text (that
    assistant's reply and later turns), shortest first. A single-turn prompt gives none."""
    prefixes = []
    start = prompt.find(_ASSISTANT)
    while start != -1:
        end = start + len(_ASSISTANT)
        if prompt[end:].strip():
            prefixes.append(prompt[:end])
        start = prompt.find(_ASSISTANT, end)
    return prefixes


def gather_prompts(unlabeled: str | Path, human_pairs: str | Path, eval_pairs: str | Path | None,
                   sources: tuple[str, ...] = ("unlabeled",), limit: int | None = None, *,
                   max_human_pairs: int | None = None,
                   human_holdout: float = 0.0) -> tuple[pa.Table, pa.Table, dict]:
    """D_U from `sources`: (prompts as schemas.PROMPTS, the unlabeled file's rows left out as
    schemas.ERRORS, counts).

    The prompts are sorted by prompt_id and cut to the first `limit`, as `data.read_prompts` does,
    so `sources=("unlabeled",)` gives read_prompts' table (less any prompt of `eval_pairs`).
    `human_pairs` are the training pairs: its first `max_human_pairs` pairs (all of `eval_pairs`
    are guarded against, whatever max_eval_pairs is); its `human_holdout` share is held out like
    `eval_pairs` (not a source, and guarded against).
    counts: per source {"read", "kept", "duplicates" (prompt_id already kept), "eval_leaks"}, then
    "eval_leaks" (all sources), "kept" (before `limit`) and "rows" (after it).
    """
    sources = check_prompt_sources(sources)
    eval_ids = set()
    if eval_pairs is not None:
        eval_ids = {data.prompt_id(p) for p in data.load_preferences(eval_pairs).column("prompt").to_pylist()}
    human = data.load_preferences(human_pairs, max_human_pairs) if "human_pairs" in sources or human_holdout else None
    if human_holdout:
        held = data.human_holdout(human, human_holdout, "holdout")
        eval_ids |= {data.prompt_id(p) for p in held.column("prompt").to_pylist()}
    guarded = pa.array(sorted(eval_ids), pa.string())
    kept: list[pa.Table] = []  # each source's new prompts (schemas.PROMPTS), in the order of `sources`
    counts: dict = {}
    origins: list[tuple[str, pa.Table]] = []  # (source, its kept rows): what earlier_turns cuts

    def add(name: str, rows: pa.Table) -> pa.Table:
        """Keep the rows of `rows` (schemas.PROMPTS) whose prompt is neither guarded nor kept already
        (by an earlier source, or by an earlier row of this one); Arrow operations, no row objects."""
        ids = rows.column("prompt_id")
        leak = pc.is_in(ids, value_set=guarded)
        earlier = pa.concat_arrays([c for t in kept for c in t.column("prompt_id").chunks]) if kept else None
        seen = pc.is_in(ids, value_set=earlier) if earlier is not None else pa.array([False] * len(rows))
        order = pa.array(range(len(rows)), pa.int64())
        firsts = pa.table({"prompt_id": ids, "_order": order}).group_by("prompt_id", use_threads=False).aggregate(
            [("_order", "min")]).column("_order_min")
        first = pc.is_in(order, value_set=firsts)
        new = pc.and_(pc.and_(pc.invert(leak), pc.invert(seen)), first)
        n_new, n_leak = pc.sum(new.cast(pa.int64())).as_py() or 0, pc.sum(leak.cast(pa.int64())).as_py() or 0
        counts[name] = {"read": len(rows), "kept": n_new, "duplicates": len(rows) - n_new - n_leak,
                        "eval_leaks": n_leak}
        added = rows.filter(new)
        kept.append(added)
        return added

    def table_of(texts: list[str], source) -> pa.Table:
        sources_ = source if isinstance(source, list) else [source] * len(texts)
        return pa.Table.from_pydict({"prompt_id": [data.prompt_id(t) for t in texts], "prompt": texts,
                                     "source": sources_}, schema=schemas.PROMPTS)

    errors = pa.Table.from_pylist([], schema=schemas.ERRORS)
    if "unlabeled" in sources:
        table, errors = data.read_prompts(unlabeled)
        origins.append(("unlabeled", add("unlabeled", table)))
    if "human_pairs" in sources:
        texts = data.human_holdout(human, human_holdout, "rest").column("prompt").to_pylist()
        origins.append(("human_pairs", add("human_pairs", table_of(texts, "human_pairs"))))
    if "earlier_turns" in sources:
        cut = [(prefix, f"earlier_turn:{origin}") for origin, rows in origins
               for text in rows.column("prompt").to_pylist() for prefix in earlier_turn_prefixes(text)]
        add("earlier_turns", table_of([c[0] for c in cut], [c[1] for c in cut]))
    counts["eval_leaks"] = sum(counts[s]["eval_leaks"] for s in PROMPT_SOURCES if s in counts)
    counts["kept"] = sum(len(t) for t in kept)
    prompts = pa.concat_tables(kept) if kept else schemas.PROMPTS.empty_table()
    prompts = prompts.sort_by("prompt_id")
    if limit is not None:
        prompts = prompts.slice(0, limit)
    counts["rows"] = len(prompts)
    return prompts, errors, counts


def gather_for(settings, unlabeled: str | Path | None = None) -> tuple[pa.Table, pa.Table, dict]:
    """`gather_prompts` as `wofn.settings.Settings` asks: from `prompt_sources`, deduplicated by prompt_id,
    the prompts of eval_pairs and of the human_holdout share left out (`unlabeled`: another prompt file
    in place of the unlabeled_prompts setting)."""
    return gather_prompts(unlabeled or settings.unlabeled_prompts, settings.human_pairs, settings.eval_pairs,
                          tuple(settings.prompt_sources), settings.max_prompts,
                          max_human_pairs=settings.max_human_pairs, human_holdout=settings.human_holdout)
