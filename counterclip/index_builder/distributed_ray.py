"""Embedding on Ray Data (``counterclip build --engine ray``, extra ``counterclip[ray]``): `RayEmbedder`.

The same pipeline as a local build (`pipeline.embed_images`), spread over Ray: the rows with their
paths, decoding in CPU tasks (as `pipeline.DecodeMapper` decodes), an actor pool holding the model
(preprocess + encode), and the vectors carried with their ids back to the driver, which commits them to
the index through the build's own `pipeline.ShardWriter`, shard by shard, as a local build does.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.index_builder.decode import DecodeOptions
from counterclip.index_builder.pipeline import StageTimes, WorkItem


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'counterclip[ray]'") from None
    return ray


def _decode_batch(batch: dict[str, np.ndarray], options: dict[str, Any]) -> dict[str, Any]:
    """Ray CPU task: ``{"id", "path"}`` rows -> decoded upright RGB pixels (uint8) and their columns,
    decoded exactly as a local build decodes (`pipeline.DecodeMapper`); an image the model takes in its
    own mode (`LoadedImage.model_input`: a palette, 16-bit, transparent or CMYK file) goes pickled, mode,
    palette and all."""
    from counterclip.index_builder.pipeline import DecodeMapper

    mapper = DecodeMapper(DecodeOptions(**options))
    out: dict[str, list[Any]] = {
        k: [] for k in ("id", "pixels", "width", "height", "sha256", "size", "error")
    }
    for item_id, path in zip(batch["id"], batch["path"], strict=True):
        result = mapper(WorkItem(int(item_id), str(path)))
        image = result["image"]
        out["id"].append(int(item_id))
        if image is None:
            out["pixels"].append(np.zeros((1, 1, 3), np.uint8))
        elif image.mode == "RGB":
            out["pixels"].append(np.asarray(image, dtype=np.uint8))
        else:  # made by the task above, read by the actor below: never data from outside
            out["pixels"].append(np.frombuffer(pickle.dumps(image), dtype=np.uint8))
        for key in ("width", "height", "size"):
            out[key].append(-1 if result[key] is None else int(result[key]))
        out["sha256"].append(result["sha256"] or "")
        out["error"].append(result["error"] or "")
    pixels = np.empty(len(out["pixels"]), dtype=object)
    pixels[:] = out["pixels"]  # ragged images
    return {
        "id": np.asarray(out["id"], dtype=np.int64),
        "pixels": pixels,
        **{k: np.asarray(out[k], dtype=np.int64) for k in ("width", "height", "size")},
        "sha256": np.asarray(out["sha256"], dtype=object),
        "error": np.asarray(out["error"], dtype=object),
    }


class _ModelActor:
    """Ray actor holding the model: preprocess + encode a batch of decoded images (as a local build)."""

    def __init__(self, spec: dict[str, Any], fingerprint: str, device: str) -> None:
        import torch

        from counterclip.models import ModelSpec, load_model

        torch.set_num_threads(1)
        self.model = load_model(ModelSpec.from_dict(spec), device=device)
        if self.model.fingerprint != fingerprint:
            raise InputError(f"the Ray actor loaded other weights for {spec} than the driver")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch
        from PIL import Image

        n = len(batch["id"])
        dim = self.model.embed_dim
        vectors = np.zeros((n, dim), np.float32)
        errors = list(batch["error"])
        good = []
        pixels = []
        for row in range(n):
            if errors[row]:
                continue
            try:
                data = batch["pixels"][row]
                image = Image.fromarray(data) if data.ndim == 3 else pickle.loads(data.tobytes())
                pixels.append(self.model.preprocess(image))
                good.append(row)
            except Exception as exc:  # noqa: BLE001 - as the local pipeline: one image failing is recorded
                errors[row] = f"cannot preprocess: {type(exc).__name__}: {str(exc)[:200]}"
        if pixels:
            vectors[good] = self.model.encode_images(torch.stack(pixels), batch_size=len(pixels)).numpy()
        return {
            "id": batch["id"],
            "vector": vectors,
            "width": batch["width"],
            "height": batch["height"],
            "sha256": batch["sha256"],
            "size": batch["size"],
            "error": np.asarray(errors, dtype=object),
        }


class RayEmbedder:
    """An embedder (same call as `pipeline.embed_images`) running on Ray Data.

    Args:
        address: an existing cluster (``ray://host:10001`` or ``auto``); None starts a local Ray (or uses
            the one this process already started).
        actors: model actors in the pool. Default: 1.
        device: the actors' device. Default: ``cpu``.
        num_cpus: CPUs of a local Ray started here. Default: None (all).
    """

    def __init__(
        self, address: str | None = None, actors: int = 1, device: str = "cpu", num_cpus: int | None = None
    ) -> None:
        self.address = address
        self.actors = actors
        self.device = device
        self.num_cpus = num_cpus
        self.seconds: dict[str, float] = {}

    def __call__(
        self,
        items: Iterable[WorkItem],
        model: Any,
        writer: Any,
        options: DecodeOptions,
        batch_size: int,
        workers: int,
        prefetch_batches: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> StageTimes:
        ray = _require_ray()
        started = time.perf_counter()
        self._init(ray)
        self.seconds["init"] = time.perf_counter() - started
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        rows = [{"id": item.id, "path": item.path} for item in items]
        times = StageTimes()
        if not rows:
            writer.close()
            return times
        ds = ray.data.from_items(rows)
        ds = ds.map_batches(
            _decode_batch, fn_kwargs={"options": asdict(options)}, batch_size=batch_size, num_cpus=1
        )
        ds = ds.map_batches(
            _ModelActor,
            fn_constructor_args=(model.spec.to_dict(), model.fingerprint, self.device),
            batch_size=batch_size,
            concurrency=self.actors,
            num_cpus=1,
        )
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            _commit_batch(batch, writer, times)
            if on_progress is not None:
                on_progress(len(batch["id"]))
        writer.close()
        times.wall = time.perf_counter() - started
        self.seconds["pipeline"] = times.wall
        return times

    def _init(self, ray: Any) -> None:
        """Start a local Ray, or join ``address``, unless this process already did."""
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False}
            if self.address:
                kwargs["address"] = self.address
            elif self.num_cpus:
                kwargs["num_cpus"] = self.num_cpus
            ray.init(**kwargs)


def _commit_batch(batch: dict[str, Any], writer: Any, times: StageTimes) -> None:
    """Hand one embedded batch to the writer: its failures, then its vectors with their columns."""
    t0 = time.perf_counter()
    ok = [r for r, e in enumerate(batch["error"]) if not e]
    for r, error in enumerate(batch["error"]):
        if error:
            size = int(batch["size"][r])
            writer.fail(
                int(batch["id"][r]), str(error), None if size < 0 else size, batch["sha256"][r] or None
            )
    if ok:
        columns = [
            {
                "width": int(batch["width"][r]),
                "height": int(batch["height"][r]),
                "sha256": str(batch["sha256"][r]),
                "size": int(batch["size"][r]),
            }
            for r in ok
        ]
        writer.add(
            np.asarray(batch["vector"][ok], dtype=np.float32), [int(batch["id"][r]) for r in ok], columns
        )
    times.write += time.perf_counter() - t0
    times.items += len(batch["id"])
    times.failed += len(batch["id"]) - len(ok)
