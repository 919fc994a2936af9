"""The serving state of one process: the loaded bundle with its precomputed views, swapped atomically."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aura.bundle.loader import load_bundle
from aura.config import AppConfig
from aura.errors import NotReady
from aura.server.posterior_state import PosteriorState
from aura.server.request_id import bundle_tag, item_fingerprint
from aura.server.search import SearchIndex, build_search_index
from aura.server.serving import ServingIndex, build_serving_index
from aura.server.wire import ResponseParts, response_parts
from aura.v1 import common_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    """Everything a request reads, for one bundle version."""

    index: ServingIndex
    posteriors: PosteriorState
    search: SearchIndex
    response_parts: ResponseParts
    """Prepared bytes of the Rank responses."""
    item_fingerprints: tuple[int, ...]
    """Per content row, its fingerprint in request ids."""
    bundle_tag: int
    loaded_at: float

    @property
    def version(self) -> str:
        """The bundle version."""
        return self.index.version


def prepare_serving(bundle_dir: Path, config: AppConfig, state_dir: Path | None) -> Serving:
    """Load, verify and precompute a bundle for serving (the slow part of a swap, off the request path)."""
    bundle = load_bundle(bundle_dir)
    index = build_serving_index(bundle, config.surfaces, config.policies)
    content = bundle.content
    metadata = [
        common_pb2.ItemMetadata(title=content.titles[i], url=content.urls[i], topics=content.topics[i])
        for i in range(len(content))
    ]
    posteriors = PosteriorState.in_memory(bundle) if state_dir is None else PosteriorState.shared(state_dir, bundle)
    return Serving(
        index=index,
        posteriors=posteriors,
        search=build_search_index(bundle),
        response_parts=response_parts(
            content.ids, metadata, config.surfaces, config.policies.policy_version, bundle.version
        ),
        item_fingerprints=tuple(item_fingerprint(content_id) for content_id in content.ids),
        bundle_tag=bundle_tag(bundle.version),
        loaded_at=time.time(),
    )


def with_current_freshness(serving: Serving, config: AppConfig) -> Serving:
    """The same bundle and posteriors with the serving index rebuilt now, so freshness reflects the items' age."""
    return dataclasses.replace(
        serving, index=build_serving_index(serving.index.bundle, config.surfaces, config.policies)
    )


class ServingHolder:
    """Holds the current `Serving`; readers take one reference per request, a swap replaces it whole."""

    def __init__(self) -> None:
        self._current: Serving | None = None
        self._listeners: list = []
        self._lock = threading.Lock()

    @property
    def current(self) -> Serving | None:
        """The serving state, or None before the first bundle."""
        return self._current

    def require(self) -> Serving:
        """The serving state; NotReady (UNAVAILABLE) before the first bundle is loaded."""
        current = self._current
        if current is None:
            raise NotReady("no bundle is loaded yet; the node is still starting.")
        return current

    def swap(self, serving: Serving) -> None:
        """Make `serving` current and notify listeners (e.g. the health service)."""
        with self._lock:
            previous = self._current
            self._install(serving)
        log.info("serving bundle %s (previous %s)", serving.version, previous.version if previous else "none")

    def replace(self, expected: Serving, serving: Serving) -> bool:
        """Make `serving` current only while `expected` still is (a rebuild must not undo a swap); True if so."""
        with self._lock:
            if self._current is not expected:
                return False
            self._install(serving)
        return True

    def _install(self, serving: Serving) -> None:
        self._current = serving
        for listener in self._listeners:
            listener(serving)

    def on_swap(self, listener) -> None:
        """Call `listener(serving)` after every swap."""
        self._listeners.append(listener)
