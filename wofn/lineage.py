"""Lineage: what every data version of a run was made from, and the chain behind a reward model.

Each materialization writes one small record, `$WOFN_HOME/lineage/<asset>/<data version>.json`:

    {"asset": "candidates", "partition": "batch_a", "data_version": "9f2c...", "code_version": "41d0...",
     "rows": 96, "path": ".../tables/candidates/batch=batch_a", "run_id": "...", "created_at": "...",
     "inputs": {"prompts": {"batch_a": "77e1..."}}, "facts": {"policy": "tiny-llama", ...}}

A data version is the content hash of the files (`wofn.paths.content_hash`), so a record never
changes once written: the same version is the same bytes, made from the same inputs. `inputs` maps
each upstream asset to its version, or, for a table partitioned by prompt batch, to
`{batch: version}`. A model's `manifest.json` names the versions it was trained on
(`lineage`: human pairs, synthetic pairs, teacher, prompt batches), so `chain(model_dir)` follows
manifest -> records down to the prompt files, and `format_chain` prints it (`wofn lineage`).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

from wofn.paths import WofnHome

# How a model's manifest names the asset that holds its synthetic pairs (older manifests: filtered_pairs).
DEFAULT_SYNTHETIC_TABLE = "filtered_pairs"


def record_path(home: WofnHome, asset: str, version: str) -> Path:
    """`lineage/<asset>/<version>.json`; a model revision's "sha256:" prefix is written "sha256_"."""
    return home.lineage_dir / asset / f"{version.replace(':', '_')}.json"


def record(home: WofnHome, asset: str, version: str, *, partition: str | None = None, inputs: dict | None = None,
           rows: int | None = None, path: Path | str | None = None, code_version: str | None = None,
           run_id: str | None = None, facts: dict | None = None) -> Path:
    """Write the lineage record of `asset` at data version `version` (atomically); return its path."""
    out = record_path(home, asset, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "asset": asset, "partition": partition, "data_version": version, "code_version": code_version,
        "rows": rows, "path": None if path is None else str(path), "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs or {}, "facts": facts or {},
    }
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, out)
    return out


def read(home: WofnHome, asset: str, version: str) -> dict | None:
    path = record_path(home, asset, version)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def home_of(model_dir: Path) -> WofnHome:
    """The WOFN_HOME a model folder lives in: `<home>/models/<asset>` or `<home>/rounds/round_k/<asset>`."""
    model_dir = Path(model_dir).resolve()
    parent = model_dir.parent
    if parent.name == "models":
        return WofnHome(parent.parent)
    if parent.parent.name == "rounds":
        return WofnHome(parent.parent.parent)
    return WofnHome.from_env()


def _table_node(home: WofnHome, asset: str, version: str, label: str | None = None, depth: int = 0) -> dict:
    """A table version and, recursively, the versions it was made from."""
    rec = read(home, asset, version)
    node = {"kind": "table", "asset": asset, "label": label or asset, "data_version": version,
            "recorded": rec is not None}
    if rec is None:
        return node
    node.update({k: rec.get(k) for k in ("partition", "rows", "path", "code_version", "run_id", "created_at")})
    node["facts"] = rec.get("facts") or {}
    children = []
    if depth < 12:
        for name, value in sorted((rec.get("inputs") or {}).items()):
            if isinstance(value, dict):
                for part, part_version in sorted(value.items()):
                    children.append(_table_node(home, name, part_version, f"{name}[{part}]", depth + 1))
            elif isinstance(value, str):
                children.append(_table_node(home, name, value, name, depth + 1))
    node["inputs"] = children
    return node


def chain(model_dir: Path | str, home: WofnHome | None = None, depth: int = 0) -> dict:
    """The lineage tree of a reward model: its data, its teacher (recursively) and their tables."""
    model_dir = Path(model_dir).resolve()
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no manifest.json; give a model folder wofn wrote "
                                "(e.g. $WOFN_HOME/models/student_reward_model)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    home = home or home_of(model_dir)
    lineage = manifest.get("lineage") or {}
    node = {"kind": "model", "label": manifest.get("role") or model_dir.name, "path": str(model_dir),
            "revision": manifest.get("revision"), "round": manifest.get("round"),
            "model_kind": manifest.get("kind"), "policy": lineage.get("policy"),
            "code_version": lineage.get("code_version"), "inputs": []}
    if lineage.get("human_preferences"):
        node["inputs"].append(_table_node(home, "human_preferences", lineage["human_preferences"], "human pairs"))
    teacher = lineage.get("teacher") or {}
    if teacher.get("path"):
        if depth < 8 and (Path(teacher["path"]) / "manifest.json").is_file():
            child = chain(teacher["path"], home, depth + 1)
            if teacher.get("revision") and child.get("revision") != teacher["revision"]:
                child["note"] = (f"the folder now holds revision {child.get('revision')}; "
                                 f"trained with {teacher['revision']}")
                child["revision"] = teacher["revision"]
        else:
            child = {"kind": "model", "label": "teacher", "path": teacher["path"], "revision": teacher.get("revision"),
                     "inputs": []}
        child["label"] = f"teacher ({child['label']})"
        node["inputs"].append(child)
    if lineage.get("synthetic_pairs"):
        table = lineage.get("synthetic_table", DEFAULT_SYNTHETIC_TABLE)
        node["inputs"].append(_table_node(home, table, lineage["synthetic_pairs"], f"synthetic pairs ({table})"))
    return node


def _describe(node: dict) -> str:
    if node["kind"] == "model":
        parts = [node["label"], f"revision {node.get('revision')}"]
        if node.get("round"):
            parts.append(f"round {node['round']}")
        if node.get("model_kind"):
            parts.append(str(node["model_kind"]))
        if node.get("policy"):
            parts.append(f"policy {node['policy']}")
        text = "  ".join(parts) + f"  {node.get('path')}"
        return text + (f"  ({node['note']})" if node.get("note") else "")
    text = f"{node['label']}  {node['data_version']}"
    if not node.get("recorded"):
        return text + "  (no lineage record)"
    if node.get("rows") is not None:
        text += f"  {node['rows']} rows"
    if node.get("code_version"):
        text += f"  code {node['code_version']}"
    facts = node.get("facts") or {}
    if facts.get("source"):
        text += f"  <- {facts['source']}"
        if facts.get("source_hash"):
            text += f" (sha256 {facts['source_hash']})"
    for key in ("policy", "policy_revision", "reward_model_revision", "strategy"):
        if facts.get(key):
            text += f"  {key} {facts[key]}"
    return text


def format_chain(node: dict) -> str:
    """The tree as text, one node a line (model -> teacher -> tables -> prompt files)."""
    lines = [_describe(node)]
    # a table version met again (e.g. candidates under pairs and scores) is not expanded twice
    shown: set[tuple] = set()

    def walk(children: list[dict], prefix: str) -> None:
        for i, child in enumerate(children):
            last = i == len(children) - 1
            key = (child.get("label"), child.get("data_version") or child.get("revision"))
            again = child["kind"] == "table" and bool(child.get("inputs")) and key in shown
            shown.add(key)
            lines.append(prefix + ("└── " if last else "├── ") + _describe(child)
                         + ("  (inputs as above)" if again else ""))
            if not again:
                walk(child.get("inputs") or [], prefix + ("    " if last else "│   "))

    walk(node.get("inputs") or [], "")
    return "\n".join(lines)
