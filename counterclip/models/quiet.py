"""Model loading without third-party chatter: no progress bars from transformers or the Hugging Face hub,
no info or warning lines from their loggers (nor open_clip's or timm's), each restored afterwards.

counterclip reports what matters itself (a missing head, an offline hub: one line); a library that prints
"Loading weights 100%|████|" into a CLI's JSON pipe or a retrieval app's logs is noise.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

QUIET_LOGGERS = ("transformers", "huggingface_hub", "open_clip", "timm")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence the loaders' progress bars and logs for the enclosed block; the caller's settings return
    after it (even when it raises)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_transformers_quiet())
        stack.enter_context(_hub_quiet())
        for name in QUIET_LOGGERS:
            logger = logging.getLogger(name)
            level = logger.level
            logger.setLevel(logging.ERROR)
            stack.callback(logger.setLevel, level)
        yield


@contextlib.contextmanager
def _transformers_quiet() -> Iterator[None]:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _hub_quiet() -> Iterator[None]:
    try:
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )
    except ImportError:  # pragma: no cover - a dependency of transformers
        yield
        return
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()
