"""Which calibration an index's queries use, found without loading the model (for ``counterclip info``).

The same order as the engine's ``auto`` choice (`counterclip.engine.resources.choose_calibration`): the
model's own probability (a sigmoid score); a calibration fitted with ``counterclip calibrate``; the one
shipped with a bundled model; the one fitted at build time on the index's captions; one fitted from the
index itself at query time; none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from counterclip.calibration import MIN_PAIRS, Calibration
from counterclip.errors import InputError


@dataclass(frozen=True)
class CalibrationInUse:
    """The calibration the verdicts use (None when it is decided at query time, or none holds) and how
    ``info`` says it."""

    calibration: Calibration | None
    words: str


def _line(calibration: Calibration, where: str) -> str:
    return f"{calibration.name()}{where}: match line at score {calibration.score_at():.2f}"


def shipped_calibration(spec: Any, fingerprint: str) -> Calibration | None:
    """The calibration shipped with a bundled model, when it belongs to these weights."""
    if getattr(spec, "backend", None) != "bundled":
        return None
    from counterclip.models.factory import BUNDLED_CALIBRATION, bundled_dir

    path = bundled_dir(spec.name) / BUNDLED_CALIBRATION
    try:
        calibration = Calibration.read(path) if path.is_file() else None
    except InputError:
        return None
    return calibration if calibration is not None and calibration.fingerprint == fingerprint else None


def calibration_in_use(index: Any) -> CalibrationInUse:
    """What an open `Index`'s queries calibrate their verdicts with, by default (``auto``)."""
    record = index.manifest.model
    if (record.score or {}).get("link") == "sigmoid":
        return CalibrationInUse(None, "the model's own p(match) (its score is a sigmoid probability)")
    recorded = index.calibration
    if recorded is not None and recorded.fingerprint != index.fingerprint:
        recorded = None  # fitted for other weights: never applied
    if recorded is not None and recorded.extras.get("origin") == "calibrate":
        return CalibrationInUse(recorded, _line(recorded, ", fitted with `counterclip calibrate`"))
    shipped = shipped_calibration(record.spec, index.fingerprint)
    if shipped is not None:
        return CalibrationInUse(shipped, _line(shipped, f", shipped with {record.spec}"))
    if recorded is not None:
        return CalibrationInUse(recorded, _line(recorded, ", fitted at build time on the index's captions"))
    if index.captions.count >= 2 and index.images.count >= MIN_PAIRS:
        return CalibrationInUse(
            None,
            "fitted from the index itself at query time (its images against its captions), when those "
            "readings beat shuffled captions clearly; for a recorded one: `counterclip calibrate`",
        )
    return CalibrationInUse(
        None, "none (captions give one at build time; or `counterclip calibrate`): no answer is verified"
    )
