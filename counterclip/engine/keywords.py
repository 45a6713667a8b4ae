"""The keywords each query call takes, and the one error for a keyword it does not: the same words from
`Engine` in process and from the HTTP service (a 422 the `Client` raises), so an app sees one message
whichever way it calls."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable

from counterclip.engine.options import EngineOptions
from counterclip.errors import InputError

#: Arguments of each call besides its options (the counterfactual settings are `EngineOptions` fields).
CALLS: dict[str, tuple[str, ...]] = {
    "search": ("text", "image", "k", "collection"),
    "search_vectors": ("vectors", "k", "collection"),
    "search_batch": ("texts", "images", "vectors", "k", "collection"),
    "counterfactuals": ("image", "text", "side", "mode", "labels", "target", "k", "options"),
}
#: The settings the HTTP service takes per counterfactual request (the others are the service's own).
SERVED_OPTIONS = ("match_margin", "nomatch_margin", "threshold", "verify_with")


def known_keywords(call: str) -> tuple[str, ...]:
    """Every keyword ``call`` takes in process (a counterfactual query: also every `EngineOptions` field)."""
    options = tuple(f.name for f in dataclasses.fields(EngineOptions)) if call == "counterfactuals" else ()
    return CALLS[call] + options


def unknown_keywords(call: str, names: Iterable[str]) -> InputError:
    """The error for keywords ``call`` does not take: ``kk: search() takes no such keyword; did you mean
    'k'?`` (the field first, as every error of the HTTP service names it)."""
    unknown = sorted(names)
    known = known_keywords(call)
    close = difflib.get_close_matches(unknown[0], known, n=1) if unknown else []
    hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(known)}"
    plural = "s" if len(unknown) > 1 else ""
    return InputError(f"{', '.join(unknown)}: {call}() takes no such keyword{plural}{hint}")


def not_served(names: Iterable[str]) -> InputError:
    """The error for counterfactual settings the HTTP service does not take per request."""
    return InputError(
        f"the service takes only {', '.join(SERVED_OPTIONS)} per request, not {', '.join(sorted(names))} "
        "(the others are the service's own settings)"
    )


def refuse_unknown(call: str, given: Iterable[str]) -> None:
    """Raise `unknown_keywords` when ``given`` holds a keyword ``call`` does not take."""
    unknown = set(given) - set(known_keywords(call))
    if unknown:
        raise unknown_keywords(call, unknown)
