"""Benchmark: millions of vectors on one machine (import, disk, RSS, search, counterfactuals, recall).

For each size N it writes N image + N caption vectors of width 512 in clip-retrieval's layout
(``img_emb/``, ``text_emb/``, ``metadata/``, float16, partitions of 100k rows), imports them with
``--memory-budget``, then, in a fresh serving process, opens the index and measures RSS at open and its
peak while serving, search p50 (text -> image, k=10), counterfactual p50 (image side, increase, k=10;
the engine's time beyond encoding) and recall@10 against exact search for text -> image queries and
for the engine's own path queries (every query the engine sent to FAISS during the counterfactuals).

Vectors with the structure of CLIP embeddings (`Generator`, constants and sources above it): a shared
mean direction per modality (random image pairs: cosine ~0.45), captions in their own cone (the
modality gap: random image-text ~0.12, matching ~0.33), content in 48 of the 512 dimensions, topics of
Zipf sizes and near-duplicate groups (nearest other image: cosine ~0.9). The statistics of the written
vectors are measured on a sample and printed (``vector_statistics``). The generator is set from these
published statistics, not from the index's targets. The bundled model's real embeddings of generated
shapes and their captions are mixed in (1000 pairs, lifted to width 512 by a fixed isometry: cosines
unchanged).
The model is a stand-in object of width 512 (the bundled model embeds to 128): it answers the known
captions' texts with their vectors and records its encoding time, which is subtracted.

    python scripts/bench_scale.py --sizes 100000 1000000 --memory-budget 2GB --workdir /tmp/bench_scale

The serving process runs FAISS with one OpenMP thread (``BENCH_FAISS_THREADS``): on 2 shared cores
a team of 2 waits for a busy core (10k vectors: search p50 33 ms with 2 threads, 2.5 ms with 1).

Figures in the closing note of issue 18 were made with this script.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# as the `counterclip` command does (counterclip/cli/__init__.py): OpenMP waits without spinning
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

D = 512
PART_ROWS = 100_000
SHAPES = 1000  # real shapes pairs mixed in


def rss() -> dict[str, float]:
    """VmRSS, VmHWM (peak), RssAnon, RssFile of this process, MB."""
    out = {}
    for line in open("/proc/self/status"):
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def shapes_pairs(workdir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The bundled model's embeddings of generated shapes and their captions, lifted to width 512."""
    cache = workdir / "shapes_pairs.npz"
    if cache.exists():
        data = np.load(cache)
        return data["img"], data["txt"], json.loads(str(data["captions"]))
    from PIL import Image

    from counterclip.models import load_model
    from counterclip.shapes import generate_folder

    folder = workdir / "shapes"
    records = generate_folder(folder, n=SHAPES, seed=11, size=64)
    model = load_model("bundled:shapes", device="cpu")
    images = [Image.open(folder / r["file"]).convert("RGB") for r in records]
    captions = [r["caption"] for r in records]
    img = np.concatenate([model.encode_pil(images[i : i + 100]).numpy() for i in range(0, SHAPES, 100)])
    txt = model.encode_texts(captions).numpy()
    lift = np.linalg.qr(np.random.default_rng(99).standard_normal((D, img.shape[1])))[0]  # isometry
    img, txt = img @ lift.T, txt @ lift.T
    np.savez(cache, img=img, txt=txt, captions=json.dumps(captions))
    return img, txt, captions


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# The generator's structure, from published statistics of CLIP embeddings (ViT-B/32 on COCO / LAION):
# - a shared mean direction per modality (the "cone effect", Liang et al. 2022, Mind the Gap): random
#   image pairs have cosine ~0.4-0.5 -> ALPHA2, the squared weight of the image mean direction;
# - captions sit in their own cone, apart from the images (the modality gap): random image-text pairs
#   ~0.1-0.15, matching pairs ~0.3 (CLIPScore, Hessel et al. 2021, rescales cos because it rarely
#   exceeds 0.4) -> GAP_COS between the two mean directions, RHO: how much of the image's own content a
#   caption carries;
# - low intrinsic dimension (tens of dimensions): the content lives in LATENT dims of the 512, plus a
#   small isotropic residue (ISO);
# - topics of Zipf-distributed sizes, and near duplicates (web collections are full of them: SemDeDup,
#   Abbas et al. 2023): items come in groups of geometric size (mean 2), so nearest neighbours have
#   cosine ~0.85-0.9 as in LAION.
LATENT = 48
ALPHA2, BETA2, ISO = 0.45, 0.45, 0.04
TOPIC = 0.25  # share of the content that is the topic's
DUP_SD = 0.3  # spread of an item around its near-duplicate group
GAP_COS, RHO = 0.25, 0.22
VOCABULARY = 5000  # pseudo-words of the captions


class Generator:
    """Image and caption vectors with the structure above; `rows` draws one partition."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        basis = np.linalg.qr(self.rng.standard_normal((D, LATENT + 2)))[0].T  # orthonormal rows
        self.mean_img, gap, self.latent = basis[0], basis[1], basis[2:]
        self.mean_txt = GAP_COS * self.mean_img + np.sqrt(1 - GAP_COS**2) * gap
        self.topics = max(50, n // 500)
        self.centres = self.rng.standard_normal((self.topics, LATENT)) / np.sqrt(LATENT)
        weights = 1.0 / np.arange(1, self.topics + 1) ** 0.8
        self.weights = weights / weights.sum()
        syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
        lengths = self.rng.integers(2, 4, VOCABULARY)
        self.vocabulary = ["".join(self.rng.choice(syllables, size=m)) for m in lengths]
        word_weights = 1.0 / np.arange(1, VOCABULARY + 1)
        self.word_weights = word_weights / word_weights.sum()
        self.topic_words = self.rng.integers(0, VOCABULARY, (self.topics, 12))

    def captions(self, topic: np.ndarray) -> list[str]:
        """Caption texts: two of the topic's words and three words of the whole vocabulary (Zipf), letters
        only (the engine reads words, not numbers), so that one-word swaps of a caption are as rare as in
        real captions rather than every caption of a template."""
        own = self.topic_words[
            topic[:, None], self.rng.integers(0, self.topic_words.shape[1], (len(topic), 2))
        ]
        common = self.rng.choice(len(self.vocabulary), size=(len(topic), 3), p=self.word_weights)
        v = self.vocabulary
        return [
            f"a photo of {v[a]} {v[b]} with {v[c]} {v[d]} {v[e]}"
            for (a, b), (c, d, e) in zip(own, common, strict=True)
        ]

    def _noise(self, rows: int, d: int) -> np.ndarray:
        return self.rng.standard_normal((rows, d), dtype=np.float32) / np.float32(np.sqrt(d))

    def rows(self, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images (rows, D), captions (rows, D), topic of each row)``, unit float32."""
        sizes = self.rng.geometric(0.5, size=rows)
        groups = int(np.searchsorted(np.cumsum(sizes), rows)) + 1
        group = np.repeat(np.arange(groups), sizes[:groups])[:rows]
        topic_of_group = self.rng.choice(self.topics, size=groups, p=self.weights)
        topic = topic_of_group[group]
        own = np.sqrt(1 - DUP_SD**2) * self._noise(groups, LATENT)[group] + DUP_SD * self._noise(rows, LATENT)
        content = np.sqrt(TOPIC) * self.centres[topic] + np.sqrt(1 - TOPIC) * own
        said = RHO * content + np.sqrt(1 - RHO**2) * (
            np.sqrt(TOPIC) * self.centres[topic] + np.sqrt(1 - TOPIC) * self._noise(rows, LATENT)
        )
        img = np.sqrt(ALPHA2) * self.mean_img + np.sqrt(1 - ALPHA2 - ISO) * (content @ self.latent)
        txt = np.sqrt(BETA2) * self.mean_txt + np.sqrt(1 - BETA2 - ISO) * (said @ self.latent)
        img = img + np.sqrt(ISO) * self._noise(rows, D)
        txt = txt + np.sqrt(ISO) * self._noise(rows, D)
        return unit(img).astype(np.float32), unit(txt).astype(np.float32), topic


def write_layout(out: Path, n: int, workdir: Path, seed: int = 0) -> dict:
    """N rows in clip-retrieval's layout; returns a few query captions with their vectors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    gen = Generator(n, seed)
    rng = np.random.default_rng(seed + 1)
    shapes_img, shapes_txt, shapes_cap = shapes_pairs(workdir)
    for sub in ("img_emb", "text_emb", "metadata"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    parts = -(-n // PART_ROWS)
    width = len(str(parts - 1))
    queries = {}
    for p in range(parts):
        rows = min(PART_ROWS, n - p * PART_ROWS)
        img, txt, c = gen.rows(rows)
        captions = gen.captions(c)
        if p == 0:  # the real shapes pairs lead the first partition
            k = min(SHAPES, rows)
            img[:k], txt[:k] = shapes_img[:k], shapes_txt[:k]
            captions[:k] = [f"{t} (#{i})" for i, t in enumerate(shapes_cap[:k])]
        for i in rng.choice(rows, size=min(20, rows), replace=False) if p == 0 else []:
            queries[captions[i]] = txt[i].astype(np.float32)
        key = str(p).zfill(width)
        np.save(out / f"img_emb/img_emb_{key}.npy", img.astype(np.float16))
        np.save(out / f"text_emb/text_emb_{key}.npy", txt.astype(np.float16))
        ids = np.arange(p * PART_ROWS, p * PART_ROWS + rows)
        table = pa.table(
            {
                "image_path": pa.array([f"images/{i:08d}.jpg" for i in ids]),
                "caption": pa.array(captions),
                "url": pa.array([f"https://example.org/{i:08d}.jpg" for i in ids]),
            }
        )
        pq.write_table(table, out / f"metadata/metadata_{key}.parquet")
    return queries


def layout_statistics(out: Path, sample: int = 300, seed: int = 3) -> dict[str, float]:
    """Statistics of the written vectors (as float16, as imported), from a seeded sample: mean cosine of
    random image pairs, of each sampled image to its nearest other image (1-NN, exact over all images),
    of matching and of random image-caption pairs, of random caption pairs; the local intrinsic dimension."""
    import faiss

    img_files = sorted((out / "img_emb").glob("img_emb_*.npy"))
    txt_files = sorted((out / "text_emb").glob("text_emb_*.npy"))
    counts = [len(np.load(f, mmap_mode="r")) for f in img_files]
    n = sum(counts)
    rng = np.random.default_rng(seed)
    picks = {name: np.sort(rng.choice(n, min(sample, n), replace=False)) for name in "abq"}

    def rows(files: list[Path], chosen: np.ndarray) -> np.ndarray:
        out_rows, start = [], 0
        for f, count in zip(files, counts, strict=True):
            inside = chosen[(chosen >= start) & (chosen < start + count)] - start
            if len(inside):
                out_rows.append(np.asarray(np.load(f, mmap_mode="r")[inside], np.float32))
            start += count
        return np.concatenate(out_rows)

    ia, ib, ta, tb = (
        rows(img_files, picks["a"]),
        rows(img_files, picks["b"]),
        rows(txt_files, picks["a"]),
        rows(txt_files, picks["b"]),
    )
    xq = rows(img_files, picks["q"])
    k = 10
    heap = faiss.ResultHeap(len(xq), k + 1, keep_max=True)
    start = 0
    for f in img_files:
        block = np.asarray(np.load(f), np.float32)
        dist, pos = faiss.knn(xq, block, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(dist, pos + start)
        start += len(block)
    heap.finalize()
    others = np.array(
        [
            [c for c, i in zip(cs, ix, strict=True) if i != q][:k]
            for cs, ix, q in zip(heap.D, heap.I, picks["q"], strict=True)
        ]
    )
    nn = others[:, 0]  # the nearest other image
    # local intrinsic dimension, Levina-Bickel maximum likelihood from the 10 nearest (chordal distances),
    # averaged as MacKay and Ghahramani do (mean of the inverses)
    chord = np.sqrt(np.maximum(2 - 2 * others, 1e-12))
    inverse = np.mean(np.log(chord[:, -1:] / chord[:, :-1]), axis=1)
    return {
        "sample": int(len(xq)),
        "random_image_pair_cos": round(float(np.mean(np.sum(ia * ib, 1))), 3),
        "image_1nn_cos": round(float(np.mean(nn)), 3),
        "matching_image_text_cos": round(float(np.mean(np.sum(ia * ta, 1))), 3),
        "random_image_text_cos": round(float(np.mean(np.sum(ia * tb, 1))), 3),
        "random_text_pair_cos": round(float(np.mean(np.sum(ta * tb, 1))), 3),
        "image_10nn_cos": round(float(np.mean(others[:, -1])), 3),
        "local_intrinsic_dim_mle_k10": round(float(1 / np.mean(inverse)), 1),
    }


class StandIn:
    """A model object of width 512: known texts -> their vectors, others -> a seeded random unit vector.
    Records the time spent encoding (subtracted from the engine's time)."""

    embed_dim = D
    fingerprint = "bench-standin-512"
    calibration = None

    def __init__(self, texts: dict[str, np.ndarray]) -> None:
        import torch  # noqa: F401 - the engine takes tensors

        from counterclip.models.spec import ModelSpec
        from counterclip.scores import PairScore

        self.texts = texts
        self.spec = ModelSpec("open_clip", "bench-standin-512", None, "random")
        self.pair_score = PairScore(100.0)
        self.encode_seconds = 0.0

    def encode_texts(self, texts, batch_size: int = 256):  # noqa: ANN001, ANN201
        import torch

        t0 = time.perf_counter()
        out = []
        for t in texts:
            v = self.texts.get(t)
            if v is None:
                v = unit(np.random.default_rng(abs(hash(t)) % 2**32).standard_normal((1, D)))[0]
            out.append(np.asarray(v, np.float32))
        self.encode_seconds += time.perf_counter() - t0
        return torch.from_numpy(np.stack(out))

    def encode_pil(self, images):  # noqa: ANN001, ANN201
        raise RuntimeError("the benchmark's items have no files")


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def exact_top(index_dir: Path, xq: np.ndarray, k: int, kind: str = "images") -> np.ndarray:
    """Exact top-k ids by brute force over the stored vectors."""
    from counterclip.index_builder.faiss_index import exact_knn
    from counterclip.index_builder.index import Index

    with Index.open(index_dir) as idx:
        coll = getattr(idx, kind)

        def blocks():
            for s in range(0, coll.count, 65536):
                ids = coll.ids[s : s + 65536]
                yield coll.vectors(ids), ids

        return exact_knn(xq.astype(np.float32), blocks, k)[1]


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean(
            [
                len(set(g[g >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum())
                for g, t in zip(got, truth, strict=True)
            ]
        )
    )


def serve(index_dir: Path, queries_file: Path, n_cf: int, n_search: int) -> dict:
    """The serving process: open, search, counterfactuals; RSS at open and peak; queries recorded."""
    import faiss

    from counterclip.engine import Engine
    from counterclip.index_builder.index import Index

    threads = int(os.environ.get("BENCH_FAISS_THREADS", "1"))
    faiss.omp_set_num_threads(threads)  # one query at a time: OpenMP teams only wait on a shared machine
    data = np.load(queries_file, allow_pickle=False)
    texts = json.loads(str(data["texts"]))
    model = StandIn(dict(zip(texts, data["vectors"], strict=True)))
    base = rss()
    t0 = time.perf_counter()
    index = Index.open(index_dir)
    engine = Engine(index, model)
    open_s = time.perf_counter() - t0
    at_open = rss()
    recorded: list[np.ndarray] = []
    search = index.images.search

    def recording(xq, k):  # noqa: ANN001, ANN202
        recorded.append(np.array(xq, np.float32))
        return search(xq, k)

    rng = np.random.default_rng(1)
    times = []
    for i in range(n_search):
        t = time.perf_counter()
        engine.search(text=texts[i % len(texts)], k=10)
        times.append(time.perf_counter() - t)
    raw = []
    for i in range(n_search):
        v = data["vectors"][i % len(texts)][None]
        t = time.perf_counter()
        index.images.search(v, 10)
        raw.append(time.perf_counter() - t)
    ids = index.images.ids[rng.choice(min(index.images.count, 1000), n_cf, replace=False)]
    index.images.search = recording
    cf, cf_beyond = [], []
    verdicts: dict[str, int] = {}
    for i in range(n_cf):
        model.encode_seconds = 0.0
        t = time.perf_counter()
        result = engine.counterfactuals(image=int(ids[i]), text=texts[i % len(texts)], k=10)
        total = time.perf_counter() - t
        cf.append(total)
        cf_beyond.append(total - model.encode_seconds)
        for item in result.items:
            verdicts[item.verdict] = verdicts.get(item.verdict, 0) + 1
    peak = rss()
    index.images.search = search  # the readings order (an option) after the default's peak: its cost
    t = time.perf_counter()
    first = engine.resources()  # the caption words and whether the readings hold: learnt once per engine
    reads = first.substitutes is not None and first.readings_hold
    words_s = time.perf_counter() - t
    by_readings = []  # the same queries in the order of the captions' readings (an option): its cost
    for i in range(n_cf):
        model.encode_seconds, t = 0.0, time.perf_counter()
        engine.counterfactuals(
            image=int(ids[i]), text=texts[i % len(texts)], k=10, image_proximity="readings"
        )
        by_readings.append(time.perf_counter() - t - model.encode_seconds)
    path_q = np.concatenate(recorded) if recorded else np.empty((0, D), np.float32)
    sample = path_q[np.random.default_rng(2).choice(len(path_q), min(800, len(path_q)), replace=False)]
    _, path_got = search(sample, 10)
    _, text_got = search(data["vectors"], 10)
    np.save(queries_file.with_suffix(".path.npy"), sample)
    return {
        "faiss_threads": threads,
        "rss_before_open_mb": base,
        "open_seconds": round(open_s, 3),
        "rss_at_open_mb": at_open,
        "rss_peak_serving_mb": peak,
        "search_p50_ms": round(1000 * float(np.median(times)), 2),
        "faiss_search_p50_ms": round(1000 * float(np.median(raw)), 2),
        "counterfactual_p50_ms": round(1000 * float(np.median(cf)), 1),
        "counterfactual_beyond_encoding_p50_ms": round(1000 * float(np.median(cf_beyond)), 1),
        "counterfactual_queries": n_cf,
        "orders_by_caption_readings": reads,
        "caption_words_seconds": round(words_s, 1),
        "rss_peak_with_readings_mb": rss(),
        "counterfactual_readings_order_beyond_encoding_p50_ms": round(
            1000 * float(np.median(by_readings)), 1
        ),
        "verdicts": verdicts,
        "path_queries_recorded": int(len(path_q)),
        "path_got": path_got.tolist(),
        "text_got": text_got.tolist(),
    }


def bench_size(n: int, args: argparse.Namespace) -> dict:
    from counterclip.index_builder.interop import import_clip_retrieval

    work = Path(args.workdir) / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    queries = write_layout(work / "cr", n, Path(args.workdir))
    write_s = time.perf_counter() - t0
    stats = layout_statistics(work / "cr")
    print(f"n={n} vectors written in {write_s:.0f} s; statistics: {json.dumps(stats)}", flush=True)
    texts = list(queries)
    qfile = work / "queries.npz"
    np.savez(qfile, texts=json.dumps(texts), vectors=np.stack([queries[t] for t in texts]))
    model = StandIn(queries)
    load = os.getloadavg()
    log_lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: log_lines.append(  # type: ignore[method-assign]
        f"{time.perf_counter() - t_import:7.1f}s {record.getMessage()}"
    )
    budget_log = logging.getLogger("counterclip.index_builder.budget")
    budget_log.addHandler(handler)
    budget_log.setLevel(logging.INFO)
    t_import = time.perf_counter()
    t0 = time.perf_counter()
    from counterclip.index_builder.config import IndexCfg

    # Approximate kinds from 50k vectors up (by the budget), recall measured on 500 queries per kind
    cfg = IndexCfg(name="bench", exact_max=args.exact_max, hnsw_max=args.hnsw_max, recall_sample=500)
    summary = import_clip_retrieval(
        work / "cr", work / "idx", model, memory_budget=args.memory_budget, config=cfg, progress=False
    )
    import_s = time.perf_counter() - t0
    budget_log.removeHandler(handler)
    print("\n".join(log_lines), flush=True)
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--serve",
            str(work / "idx"),
            str(qfile),
            str(args.cf_queries),
            str(args.search_queries),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    served = json.loads(child.stdout.strip().splitlines()[-1])
    path_q = np.load(qfile.with_suffix(".path.npy"))
    text_q = np.stack([queries[t] for t in texts])
    truth_text = exact_top(work / "idx", text_q, 10)
    truth_path = exact_top(work / "idx", path_q, 10)
    result = {
        "n": n,
        "write_layout_seconds": round(write_s, 1),
        "vector_statistics": stats,
        "import_seconds": round(import_s, 1),
        "import_stage_seconds": summary.stage_seconds,
        "disk_bytes_index": du(work / "idx"),
        "disk_bytes_clip_retrieval": du(work / "cr"),
        "faiss_images": {
            k: summary.images_index[k]
            for k in ("factory", "io", "search_params", "recall_by_query", "memory")
        },
        "faiss_captions": {
            k: summary.captions_index[k] for k in ("factory", "io", "search_params", "recall_by_query")
        },
        "recall_at_10_text_to_image": recall(np.array(served.pop("text_got")), truth_text),
        "recall_at_10_engine_path": recall(np.array(served.pop("path_got")), truth_path),
        **served,
        "faiss_log": log_lines,
        "loadavg_at_import": load,
        "loadavg_after": os.getloadavg(),
    }
    if not args.keep:
        shutil.rmtree(work / "cr", ignore_errors=True)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        print(json.dumps(serve(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--memory-budget", default="2GB")
    parser.add_argument("--workdir", default="/tmp/bench_scale")
    parser.add_argument("--cf-queries", type=int, default=30)
    parser.add_argument("--search-queries", type=int, default=100)
    parser.add_argument("--exact-max", type=int, default=50_000, help="exact search up to this many")
    parser.add_argument("--hnsw-max", type=int, default=50_000, help="HNSW up to this many (if it fits)")
    parser.add_argument("--keep", action="store_true", help="keep the clip-retrieval folders")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args()
    print("model: a stand-in object of width 512 (the bundled model embeds to 128); encoding time subtracted")
    results = []
    for n in args.sizes:
        r = bench_size(n, args)
        results.append(r)
        print(json.dumps(r, indent=1, default=float), flush=True)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        growth = b["n"] / a["n"]
        ratio = b["counterfactual_beyond_encoding_p50_ms"] / max(
            a["counterfactual_beyond_encoding_p50_ms"], 1e-9
        )
        # on paper: costs that grow with N (import, disk) linearly, query costs by the measured ratio per x10
        per10 = ratio ** (1 / np.log10(growth))
        print(
            json.dumps(
                {
                    "growth": growth,
                    "counterfactual_p50_ratio": round(ratio, 2),
                    "search_p50_ratio": round(b["search_p50_ms"] / max(a["search_p50_ms"], 1e-9), 2),
                    "extrapolated_10x_of_largest": {
                        "n": b["n"] * 10,
                        "import_seconds": round(b["import_seconds"] * 10),
                        "disk_bytes_index": b["disk_bytes_index"] * 10,
                        "counterfactual_p50_ms": round(b["counterfactual_beyond_encoding_p50_ms"] * per10, 1),
                    },
                }
            )
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
