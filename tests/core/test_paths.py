"""Publishing folders whole: staging beside the final folder, and what a killed writer leaves."""

from __future__ import annotations

import subprocess
import sys

from wofn.paths import publish, staging_dir, sweep_orphans


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_staging_is_swept_and_a_live_ones_kept(tmp_path):
    final = tmp_path / "tables" / "pairs"
    final.mkdir(parents=True)
    dead, live = _dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        orphans = [final.parent / f".pairs.staging-{dead}-0123abcd", final.parent / f".pairs.old-{dead}-89abcdef"]
        kept = [final.parent / f".pairs.staging-{live.pid}-0123abcd",  # another process writing now
                final.parent / ".pairs.staging-0123abcd",  # a name from before pids: unknown owner
                final.parent / f".other.staging-{dead}-0123abcd"]  # another table's
        for folder in orphans + kept:
            (folder / "part-0.parquet").parent.mkdir()
            (folder / "part-0.parquet").write_bytes(b"x")
        staging = staging_dir(final)
        assert sorted(p.name for p in final.parent.iterdir()) == sorted(
            ["pairs", staging.name] + [k.name for k in kept])
        publish(staging, final)
        assert sorted(p.name for p in final.parent.iterdir()) == sorted(["pairs"] + [k.name for k in kept])
    finally:
        live.kill()
        live.wait()


def test_the_previous_version_is_kept_while_the_final_folder_is_missing(tmp_path):
    """Killed between publish's two renames: the swap folder is the only copy; it is not swept."""
    final = tmp_path / "pairs"
    old = tmp_path / f".pairs.old-{_dead_pid()}-0123abcd"
    old.mkdir()
    assert sweep_orphans(final) == [] and old.is_dir()
    final.mkdir()
    assert sweep_orphans(final) == [old] and not old.exists()
