"""Selecting assets: a step that writes several tables is a multi-asset that runs whole, so a
selection of one of its tables takes the others with it (the UI does the same when you click
Materialize on one)."""

from dagster import AssetSelection


def select(*assets: str, upstream: bool = False, downstream: bool = False) -> AssetSelection:
    """`assets` (with everything upstream or downstream of them if asked) and the tables their steps
    write beside them."""
    selection = AssetSelection.assets(*assets)
    if upstream:
        selection = selection.upstream()
    if downstream:
        selection = selection.downstream()
    return selection.required_multi_asset_neighbors()
