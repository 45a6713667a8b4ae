"""A build or update in a child process that dies by SIGKILL at a chosen moment (used by test_crash.py).

Usage: python crash_child.py SPEC FOLDER INDEX build|update MODE ARG

MODE: ``slow`` (each batch sleeps ARG seconds; the parent kills us from outside), or a point where the
process kills itself on the ARG-th time it gets there: ``after-shard-file`` (a shard file is on disk,
its rows are not committed), ``mid-shard-file`` (a shard's temp file is half-written),
``before-faiss``, ``before-manifest``, ``during-compaction`` (new shards committed, old ones not deleted).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def die_on_call(module: object, name: str, nth: int, before: bool = False, partial: bool = False) -> None:
    """Replace ``module.name`` so that its ``nth`` call SIGKILLs the process (before or after the real call)."""
    original = getattr(module, name)
    calls = [0]

    def wrapped(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == nth:
            if partial:  # atomic_write(path, write): leave a torn temp file, as a crash mid-write would
                path = Path(args[0])
                path.with_name(path.name + ".tmp").write_bytes(b"\x93NUMPY torn")
            if before or partial:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            return result
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


def main() -> None:
    spec, folder, index_dir, op, mode, arg = sys.argv[1:7]
    from ibhelpers import SMALL_SHARDS

    from counterclip.index_builder import (
        budget,
        build_compact,
        build_index,
        manifest,
        pipeline,
        shards,
        update_index,
    )
    from counterclip.models import load_model

    model = load_model(spec, device="cpu")
    if mode == "slow":
        encode = model.encode_images

        def slow(*args: object, **kwargs: object) -> object:
            time.sleep(float(arg))
            return encode(*args, **kwargs)

        model.encode_images = slow
    elif mode == "after-shard-file":
        die_on_call(pipeline, "write_shard", int(arg))
    elif mode == "mid-shard-file":
        die_on_call(shards, "atomic_write", int(arg), partial=True)
    elif mode == "before-faiss":
        die_on_call(budget, "write_index_atomic", int(arg), before=True)  # budget.write_faiss writes it
    elif mode == "before-manifest":
        die_on_call(manifest.Manifest, "write", int(arg), before=True)
    elif mode == "during-compaction":
        die_on_call(build_compact, "delete_shards", int(arg), before=True)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("ready", flush=True)
    if op == "build":
        build_index(folder, index_dir, model=model, progress=False, config=SMALL_SHARDS)
    else:
        update_index(index_dir, model=model, progress=False)
    print("finished", flush=True)


if __name__ == "__main__":
    main()
