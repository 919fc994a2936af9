"""A loaded bundle's serving index is rebuilt as time passes (freshness decays), never over a newer swap."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np

from aura.config import load_config
from aura.edge.node import keep_freshness_current
from aura.server.serving import build_serving_index
from aura.server.state import ServingHolder, prepare_serving, with_current_freshness
from tests.bundle_factory import make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]
LONG_AGO = 1_756_857_600.0  # 2025-09-03


def serving_of(tmp_path: Path, version: str):
    config = load_config({"AURA_CONFIG_DIR": str(REPO / "config")})
    bundle_dir = make_tiny_bundle(tmp_path / "built", version, surfaces=tuple(config.surfaces))
    return prepare_serving(bundle_dir, config, None), config


def test_a_rebuilt_index_keeps_bundle_and_posteriors_and_ages_the_items(tmp_path: Path) -> None:
    loaded, config = serving_of(tmp_path, "v1")
    # Built two days after the tiny bundle's first publication, when its items were new.
    index = build_serving_index(loaded.index.bundle, config.surfaces, config.policies, now=LONG_AGO)
    serving = dataclasses.replace(loaded, index=index)
    rebuilt = with_current_freshness(serving, config)
    assert rebuilt.posteriors is serving.posteriors and rebuilt.index.bundle is serving.index.bundle
    assert rebuilt.version == serving.version and rebuilt.loaded_at == serving.loaded_at
    assert rebuilt.index.built_at > index.built_at
    old = np.concatenate([cell.freshness for cell in index.cells.values()])
    new = np.concatenate([cell.freshness for cell in rebuilt.index.cells.values()])
    assert np.all(new <= old) and np.any(new < old)


def test_a_rebuild_never_replaces_a_newer_swap(tmp_path: Path) -> None:
    first, config = serving_of(tmp_path / "a", "v1")
    second, _ = serving_of(tmp_path / "b", "v2")
    holder = ServingHolder()
    swaps = []
    holder.on_swap(swaps.append)
    holder.swap(first)
    rebuilt = with_current_freshness(first, config)
    holder.swap(second)
    assert not holder.replace(first, rebuilt)
    assert holder.current is second
    assert holder.replace(second, with_current_freshness(second, config))
    assert holder.current is not second and holder.current.version == "v2"
    assert [serving.version for serving in swaps] == ["v1", "v2", "v2"]


def test_the_node_rebuilds_an_index_once_it_is_old(tmp_path: Path) -> None:
    serving, config = serving_of(tmp_path, "v1")
    holder = ServingHolder()
    holder.swap(serving)

    async def run() -> None:
        stop = asyncio.Event()
        refresher = asyncio.create_task(keep_freshness_current(holder, config, stop, max_age=0.2))
        await asyncio.sleep(1.0)
        stop.set()
        await refresher

    asyncio.run(run())
    assert holder.current is not serving
    assert holder.current.posteriors is serving.posteriors
    assert holder.current.index.built_at > serving.index.built_at
