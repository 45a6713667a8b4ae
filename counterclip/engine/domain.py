"""The calibration's domain: the words a p(match) is evidence for.

A calibration is fitted on texts (the index's captions, or the shapes world's for the bundled model); on a
text whose words it never saw ("a photo of a dog" on a shapes index) its probability is extrapolation, and
a high one means nothing. So a query's content words are checked against the words the index's captions
use and those the calibration was fitted on (``extras["vocabulary"]``): a word in neither is out of domain
and no answer is "verified" (a word one or two edits from a known one is named as a likely misspelling).
A model's own absolute score (SigLIP's sigmoid) has no such list: its domain is the model's, and only
misspellings of the index's words are doubted.
"""

from __future__ import annotations

from counterclip.calibration import Calibration
from counterclip.engine.words import FRAMING_WORDS, Lexicon, words_of


def calibration_vocabulary(calibration: Calibration | None) -> list[str]:
    """The words the calibration was fitted on, where it records them."""
    if calibration is None:
        return []
    return list(calibration.extras.get("vocabulary") or [])


def known_words(lexicon: Lexicon | None, calibration: Calibration | None) -> Lexicon | None:
    """The index's caption words and the calibration's, as one lexicon (None when neither is known)."""
    vocabulary = calibration_vocabulary(calibration)
    if not vocabulary:
        return lexicon
    known = Lexicon(vocabulary)
    if lexicon is not None:
        known.counts.update(lexicon.counts)
    return known


def domain_doubt(texts: list[str], lexicon: Lexicon | None, calibration: Calibration | None) -> str | None:
    """Why no answer of a query may be "verified" because of its words (None when its words are known)."""
    native = calibration is not None and calibration.source == "native"
    known = lexicon if native else known_words(lexicon, calibration)
    if known is None or not len(known):
        return None
    unknown = [(w, closest) for text in texts for w, closest in known.unknown(text) if w not in FRAMING_WORDS]
    unknown = list(dict(unknown).items())  # each word once, in the order the texts use them
    misspelt = [w for w, closest in unknown if closest]
    if misspelt:
        return (
            f"the text uses {', '.join(map(repr, misspelt))}, which the index's captions never do: no answer "
            "is 'verified' until the text uses words the index knows"
        )
    strange = [w for w, _ in unknown]
    if strange and not native:
        return (
            f"the text uses {', '.join(map(repr, strange))}, which neither the index's captions nor the texts "
            "the calibration was fitted on ever use: p(match) is no evidence for it, so no answer is 'verified'"
        )
    return None


def unchecked_words(texts: list[str], lexicon: Lexicon | None, calibration: Calibration | None) -> str | None:
    """The warning for a query whose words could not be checked (no captions, no recorded vocabulary)."""
    if calibration is None or calibration.source == "native" or known_words(lexicon, calibration) is not None:
        return None
    if not any(words_of(text) for text in texts):
        return None
    return (
        "this index holds no captions and its calibration records no vocabulary, so the words of the text "
        "could not be checked against the texts p(match) was fitted on: 'verified' holds only for texts like those"
    )
