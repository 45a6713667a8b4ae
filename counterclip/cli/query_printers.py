"""How the query commands print (presentation only): the search and counterfactual tables, the baselines
and stale files of a counterfactual result, and the tables of ``eval counterfactual``.

Every printer takes what the engine or the evaluation returned and writes to stdout; none computes a
figure of its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from counterclip.cli._common import metrics_table, out, say
from counterclip.errors import InputError

#: The figures of each method ``eval counterfactual`` prints per side (``--json`` has them all).
EVAL_METRICS = [
    "answered_rate",
    "minimal_swap_at_1",
    "verified_rate",
    "hit_at_1",
    "minimal_at_1",
    "mean_distance_top1",
    "diversity_at_k",
    "latency_ms_p50",
    "latency_ms_p95",
]


def print_paths(result: Any, root: Path, end: bytes = b"\n") -> None:
    """``search --paths``: one full path per line (captions: the text on one line), for piping; with
    ``end=b"\\0"`` (``--print0``) each ended by a NUL byte instead, so a name may hold a newline. A path
    holding ``end`` is refused (it would split in two)."""
    lines = [
        os.fsencode(root / i.path) if i.path else " ".join((i.text or "").split()).encode()
        for i in result.items
    ]
    split = [line for line in lines if end in line]
    if split:
        what = "newline" if end == b"\n" else "NUL byte"
        raise InputError(
            f"a path holds a {what} ({os.fsdecode(split[0])!r}): printed one per line it would split in "
            "two; use --print0 (-0) with xargs -0"
        )
    sys.stdout.flush()
    sys.stdout.buffer.write(b"".join(line + end for line in lines))
    sys.stdout.buffer.flush()


def print_search(
    result: Any,
    query: str,
    collection: str,
    root: Path,
    captions: dict[int, list[str]],
    numbers: dict[str, str] | None = None,
) -> None:
    """``search``: a heading naming the query, the warnings, the table of hits and what its numbers
    mean (``numbers``: `counterclip.scores.number_words` for the search's kind of pair)."""
    out.print(f"[bold]{len(result.items)} {collection}[/] for {escape(query)}", highlight=False)
    for warning in result.warnings:
        say(f"[yellow]warning[/] {escape(warning)}")
    out.print(_search_table(result, root, captions), highlight=False)
    shown = {"score", "p(match)"} if any(i.p_match is not None for i in result.items) else {"score"}
    for name, words in (numbers or {}).items():
        if name in shown:
            say(f"[dim]{escape(name)}: {escape(words)}[/]")


def print_counterfactual(
    result: Any, text: str | None, root: Path, report: Path | None, score: Any = None
) -> None:
    """``counterfactual``: the original's own reading (settled first), the validity rule, the verdicts'
    calibration, warnings, the answers in their stated order with why each is not verified, each
    baseline's answer, stale files, what the numbers mean and where the report went."""
    from counterclip.report.reading import (  # here: the report package loads the renderers
        answers_heading,
        left_out_words,
        original_numbers,
        other_warnings,
        result_numbers,
        settled,
        target_note,
    )

    data = result.to_dict()
    if settled(data):
        say(f"[bold]{escape(settled(data))}[/]")
    say(f"[bold]original[/] {escape(original_numbers(data))}")
    if target_note(data):
        say(f"[bold]target[/] {escape(target_note(data))}")
    say(f"[bold]valid when[/] {escape(result.validity.rule)}")
    say(f"[bold]verdicts[/] by the {escape(result.calibration or 'no calibration')}")
    for warning in other_warnings(data):
        say(f"[yellow]warning[/] {escape(warning)}")
    title = answers_heading(data, len(result.items)).replace("answer", "counterfactual", 1)
    if result.side == "image" and result.items:
        title += f" (in {root})"
    original = text if result.side == "text" else None
    out.print(_items_table(escape(title), result.items, result.mode, original), highlight=False)
    _print_reasons(result.items)
    if left_out_words(data):
        say(escape(left_out_words(data)))
    _print_baselines(result)
    for entry in result.stale:
        out.print(
            f"[yellow]stale[/] {escape(str(entry.get('path') or entry.get('text')))}: {entry['reason']} "
            "(run counterclip update)",
            highlight=False,
        )
    for name, words in result_numbers(data, score).items():
        say(f"[dim]{escape(name)}: {escape(words)}[/]")
    if result.quality is not None:
        print_quality(result.quality)
    if report is not None:
        out.print(f"report: {escape(str(report))}", highlight=False)


def print_quality(quality: Any) -> None:
    """``counterfactual --quality``: the answers' summary card in five lines (each quality's number
    beside the nearest unlike neighbour's, one sentence), the top answer's sentences, and the cost."""
    say(
        f"[bold]quality[/] of the {len(quality.answers)} answer(s) ({quality.forward_passes} extra forward "
        f"passes, {quality.seconds:.2f} s; --json has every card and definition)"
    )
    top = quality.answers[0].measures() if quality.answers else {}
    for name, measure in quality.summary.measures().items():
        reference = (
            f" vs {measure.reference:.2f} {measure.reference_name}" if measure.reference is not None else ""
        )
        better = (
            ""
            if measure.beats_reference is None
            else (" [green]better[/]" if measure.beats_reference else "")
        )
        first = f" — #1: {escape(top[name].sentence)}" if name in top and top[name].sentence else ""
        say(f"  {name:<17} {measure.shown():>5}{escape(reference)}{better}{first}")


def _print_reasons(items: Any) -> None:
    """Why answers are not verified, one line per reason with the answers it holds for."""
    by_reason: dict[str, list[str]] = {}
    for item in items:
        if item.reason:
            by_reason.setdefault(item.reason, []).append(f"#{item.rank}")
    for reason, ranks in by_reason.items():
        say(f"[yellow]not verified[/] ({', '.join(ranks)}): {escape(reason)}")


def print_counterfactual_evaluation(report: dict[str, Any]) -> None:
    """``eval counterfactual``: a table per side measured (a row per figure, a column per method), then
    the verdict and diversity figures in one line each."""
    for side_name in ("image_side", "text_side"):
        if side_name not in report:
            continue
        section = report[side_name]
        title = f"{side_name.replace('_', ' ')}: {section.get('drawn')} queries measured"
        passed = section.get("skipped_no_minimal_answer")
        if passed:
            title += f" ({passed} more drawn and passed over: the index holds no one-change answer for them)"
        methods = {name: values for name, values in section.items() if isinstance(values, dict)}
        out.print(metrics_table(title, methods, EVAL_METRICS), highlight=False)
    for name in ("verdicts", "decrease_diversity"):
        if name in report:
            figures = ", ".join(
                f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in report[name].items()
            )
            say(f"[bold]{name.replace('_', ' ')}[/]: {figures}")


def _print_baselines(result: Any) -> None:
    """One line per baseline answer ("none found" for a baseline without one), marking an answer the
    gradient path also gave."""
    answered = {item.id: item.rank for item in result.items}
    for name, items in result.baselines.items():
        for item in items or [None]:
            if item is None:
                out.print(f"baseline {name.replace('_', ' ')}: none found", highlight=False)
                continue
            shown = escape(item.path or f"\u201c{item.text}\u201d")
            same = f" (= answer #{answered[item.id]})" if item.id in answered else ""
            before = "" if item.score_before is None else f"{item.score_before:.2f} -> "
            say(
                f"baseline {name.replace('_', ' ')}: {shown} {before}{item.score_after:.2f} "
                f"{_verdict_cell(item.verdict)}{same}"
            )


def _caption_cell(text: str, original: str | None) -> str:
    """A caption with the words that differ from ``original`` in bold and underlined (rich markup)."""
    if not original:
        return escape(f"\u201c{text}\u201d")
    from counterclip.report.words import changed_words

    _, added = changed_words(original, text)
    words = [
        f"[bold underline]{escape(w)}[/]" if i in added else escape(w) for i, w in enumerate(text.split())
    ]
    return "\u201c" + " ".join(words) + "\u201d"


def _items_table(title: str, items: Any, mode: str | None = None, original: str | None = None) -> Table:
    """Counterfactual answers: rank, the item (its full path or text, folded, never cut), score before ->
    after, verdict and p(match), distance to the original."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("item", overflow="fold", ratio=3)
    table.add_column("class prob." if mode == "flip" else "score", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("p(match)" + (" of target" if mode == "flip" else ""), justify="right", no_wrap=True)
    table.add_column("dist", justify="right", no_wrap=True)
    digits = 3 if mode == "flip" else 2
    for i in items:
        before = "" if i.score_before is None else f"{i.score_before:.{digits}f} -> "
        table.add_row(
            str(i.rank),
            escape(i.path) if i.path else _caption_cell(i.text or "", original),
            f"{before}{i.score_after:.{digits}f}",
            _verdict_cell(i.verdict),
            "" if i.p_match is None else f"{i.p_match:.2f}",
            f"{i.distance:.3f}",
        )
    return table


def _verdict_cell(verdict: str | None) -> str:
    colour = {"verified": "green", "weak": "yellow", "unverifiable": "dim"}.get(verdict or "", "dim")
    return f"[{colour}]{verdict or '-'}[/]"


def _search_table(result: Any, root: Path, captions: dict[int, list[str]]) -> Table:
    """Search hits: rank, score, p(match) when a calibration holds, the full path (folded, never cut)
    and the first caption the index holds for the image."""
    images = bool(result.items) and result.items[0].kind == "image"
    calibrated = any(i.p_match is not None for i in result.items)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    if calibrated:
        table.add_column("p(match)", justify="right", no_wrap=True)
    if images:
        # the path keeps its full width when the terminal allows (at least 12 columns left for the
        # caption); otherwise it folds onto more lines, never cut
        columns = 5 if calibrated else 4
        fixed = len(str(len(result.items))) + max(len(f"{i.score_after:.2f}") for i in result.items)
        fixed += (8 if calibrated else 0) + 3 * columns + 1
        longest = max(len(str(root / i.path)) for i in result.items)
        path_width = max(min(longest, out.width - fixed - 12), 12)
        table.add_column("path", overflow="fold", width=path_width)
        table.add_column("caption", overflow="fold", width=max(out.width - fixed - path_width, 12))
    else:
        table.add_column("caption", overflow="fold")
    for item in result.items:
        row = [str(item.rank), f"{item.score_after:.2f}"]
        if calibrated:
            row.append("" if item.p_match is None else f"{item.p_match:.2f}")
        if images:
            caption = (captions.get(item.id) or [""])[0]
            row += [escape(str(root / item.path)), escape(caption)]
        else:
            row.append(escape(item.text or ""))
        table.add_row(*row)
    return table
