"""`eval counterfactual` shows one progress bar over every side it measures."""

from __future__ import annotations

from counterclip.cli.engine_cmds import _one_bar_over


def test_one_bar_counts_on_across_sides() -> None:
    shown: list[tuple[int, int]] = []
    advance = _one_bar_over(lambda done, total: shown.append((done, total)), sides=2)
    for done in (1, 2, 3):  # the image side's queries
        advance(done, 3)
    for done in (1, 2, 3):  # the text side counts from 1 again
        advance(done, 3)
    assert shown == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]
