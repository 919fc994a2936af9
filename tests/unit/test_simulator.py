"""The closed loop's pure parts: which items the site publishes while the loop runs."""

from __future__ import annotations

from collections import Counter

import pytest

from aura.batch.simulator import LoopConfig, main, publication_cycles
from aura.batch.synthetic import generate_site
from aura.errors import ConfigError


def test_a_share_of_every_content_type_is_published_over_the_later_cycles() -> None:
    content = generate_site(5, n_content=80, n_visitors=50, days=1).content
    config = LoopConfig(seed=5, n_content=80, cycles=4, new_content_share=0.25)
    published_in = publication_cycles(content, config)
    assert published_in == publication_cycles(content, config)
    types = dict(zip(content["id"].to_list(), content["content_type"].to_list(), strict=True))
    per_type = Counter(types.values())
    withheld = Counter(types[cid] for cid in published_in)
    assert withheld == {t: int(0.25 * n) for t, n in per_type.items() if int(0.25 * n)}
    per_cycle = Counter(published_in.values())
    assert set(per_cycle) == {1, 2, 3} and max(per_cycle.values()) - min(per_cycle.values()) <= 1


def test_nothing_is_published_later_in_a_single_cycle_or_at_share_zero() -> None:
    content = generate_site(5, n_content=40, n_visitors=50, days=1).content
    assert publication_cycles(content, LoopConfig(cycles=1)) == {}
    assert publication_cycles(content, LoopConfig(cycles=3, new_content_share=0.0)) == {}


def test_share_must_leave_a_catalogue() -> None:
    with pytest.raises(ConfigError, match="new_content_share"):
        LoopConfig(new_content_share=1.0)


def test_the_command_line_refuses_a_bad_loop_with_a_message(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["--work-dir", str(tmp_path), "--new-content-share", "1.5"]) == 1
    assert "new_content_share must be in [0, 1), got 1.5" in capsys.readouterr().err
