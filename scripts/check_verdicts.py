"""Does "verified" mean the model really changed its mind? The figures of issue 27 on the shapes world.

Builds a shapes index with the bundled model (sidecar captions and the caption vocabulary) from which
four (colour, shape) combinations are removed, and a second one without any captions, then counts:

- absent / present: image side, increase, texts naming a combination the index does not / does hold
  (`evaluation.counterfactuals`' verdict check): queries with any verified answer / whose top answer is
  verified and right;
- out of domain: texts whose words the shapes world never uses ("a photo of a dog"): verified answers,
  on the captioned index and on the one without captions;
- no real change: increase with the image's own caption (it already matches), decrease with a text it does
  not match, the text side with the image's own caption: verified answers, and text-side answers that only
  reword the query (same content words);
- copies of the query: a byte copy and a JPEG copy of an indexed image, outside the index, as the query
  (decrease on its own caption): answers that are the original (same id, or cosine >= 0.999 to it);
- hit@1 and minimal@1 on both sides (`evaluate_counterfactuals`).

    python scripts/check_verdicts.py [--images 1500] [--seed 5] [--queries 60]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

OUT_OF_DOMAIN = [
    "a photo of a dog",
    "a cat sleeping on a sofa",
    "a red car",
    "a bowl of soup",
    "a blue bicycle",
    "a green tree in a park",
]


def removed_combinations(seed: int, n: int = 4) -> list[dict[str, str]]:
    """``n`` (colour, shape) pairs the training saw, drawn with ``seed``."""
    from counterclip.shapes.world import seen_pairs

    pairs = seen_pairs()
    picks = np.random.default_rng(seed).choice(len(pairs), n, replace=False)
    return [{"shape": pairs[i][0], "colour": pairs[i][1]} for i in sorted(picks)]


def build(base: Path, n: int, seed: int, exclude: list[dict[str, str]], captions: bool) -> Path:
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder, vocabulary

    folder = base / ("shapes" if captions else "bare")
    generate_folder(folder, n=n, seed=seed, size=64, exclude=exclude)
    vocab = None
    if captions:
        vocab = base / "vocab.txt"
        vocab.write_text("\n".join(vocabulary()) + "\n")
    else:
        for sidecar in folder.glob("*.txt"):
            sidecar.unlink()
    index = base / (folder.name + ".idx")
    build_index(folder, index, model="bundled:shapes", vocab=vocab, progress=False, device="cpu")
    return folder


def verified(result) -> int:  # noqa: ANN001 - CounterfactualResult
    return sum(item.verdict == "verified" for item in result.items)


def out_of_domain(engine, ids: list[int]) -> dict[str, int]:  # noqa: ANN001 - Engine
    answers = verified_answers = 0
    for text in OUT_OF_DOMAIN:
        for image_id in ids:
            result = engine.counterfactuals(image=image_id, text=text, k=3, baselines=False)
            answers += len(result.items)
            verified_answers += verified(result)
    return {"queries": len(OUT_OF_DOMAIN) * len(ids), "answers": answers, "verified": verified_answers}


def no_real_change(engine, records: list[dict], ids: list[int]) -> dict[str, int]:  # noqa: ANN001
    from counterclip.engine.words import content_words

    out = {"already_matches_verified": 0, "never_matched_verified": 0, "text_rewordings_returned": 0}
    out["text_side_verified_of_matching_original"] = 0
    for image_id in ids:
        own = records[image_id - 1]["caption"]
        other = "a small purple star at the top" if "star" not in own else "a large red circle on the left"
        out["already_matches_verified"] += verified(engine.counterfactuals(image=image_id, text=own, k=3))
        out["never_matched_verified"] += verified(
            engine.counterfactuals(image=image_id, text=other, mode="decrease", k=3)
        )
        reworded = engine.counterfactuals(image=image_id, text=own, side="text", mode="increase", k=3)
        out["text_side_verified_of_matching_original"] += verified(reworded)
        out["text_rewordings_returned"] += sum(
            content_words(item.text) == content_words(own) for item in reworded.items
        )
    out["queries"] = len(ids)
    return out


def query_copies(engine, folder: Path, records: list[dict], ids: list[int], tmp: Path) -> dict[str, int]:  # noqa: ANN001
    copies = tmp / "copies"
    copies.mkdir()
    returned = answers = 0
    for image_id in ids:
        source = folder / records[image_id - 1]["file"]
        byte_copy = copies / f"copy-{image_id}.png"
        shutil.copyfile(source, byte_copy)
        jpeg_copy = copies / f"copy-{image_id}.jpg"
        Image.open(source).convert("RGB").save(jpeg_copy, quality=75)
        original = engine.index.images.vectors([image_id])[0]
        for query in (byte_copy, jpeg_copy):
            result = engine.counterfactuals(
                image=query, text=records[image_id - 1]["caption"], mode="decrease", k=3
            )
            answers += len(result.items)
            for item in result.items:
                vector = engine.index.images.vectors([item.id])[0]
                returned += item.id == image_id or float(vector @ original) >= 0.999
    return {"queries": 2 * len(ids), "answers": answers, "the_original_returned": returned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--queries", type=int, default=60)
    args = parser.parse_args()
    from counterclip.engine import Engine
    from counterclip.evaluation.counterfactuals import evaluate_counterfactuals
    from counterclip.shapes import read_labels

    started = time.perf_counter()
    exclude = removed_combinations(args.seed)
    report: dict = {"images": args.images, "seed": args.seed, "removed": exclude}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        folder = build(tmp, args.images, args.seed, exclude, captions=True)
        build(tmp, min(args.images, 400), args.seed + 1, exclude, captions=False)
        records = read_labels(folder)
        rng = np.random.default_rng(args.seed)
        sample = sorted(int(i) for i in rng.choice(np.arange(1, len(records) + 1), 20, replace=False))
        with Engine.open(tmp / "shapes.idx", device="cpu") as engine:
            labels = folder / "labels.jsonl"
            figures = evaluate_counterfactuals(
                engine, labels, n_queries=args.queries, seed=args.seed, sides=("verdicts",)
            )
            report["verdicts"] = figures["verdicts"]
            quality = evaluate_counterfactuals(
                engine, labels, n_queries=100, seed=args.seed, sides=("image", "text")
            )
            report["hit_minimal"] = {
                side: {m: quality[side]["gradient_path"][m] for m in ("hit_at_1", "minimal_at_1")}
                for side in ("image_side", "text_side")
            }
            report["out_of_domain_captioned"] = out_of_domain(engine, sample[:5])
            report["no_real_change"] = no_real_change(engine, records, sample)
            report["query_copies"] = query_copies(engine, folder, records, sample, tmp)
        with Engine.open(tmp / "bare.idx", device="cpu") as engine:
            report["out_of_domain_no_captions"] = out_of_domain(engine, [1, 2, 3, 4, 5])
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
