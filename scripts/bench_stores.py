"""Benchmark: search and counterfactual latency per store (FAISS + SQLite, LanceDB, Qdrant), with memory.

For each size N it writes N image + N caption vectors of width 512 with the structure of CLIP embeddings
(`bench_scale.Generator`, the same generator and layout as the scale benchmark), imports them into
counterclip's own index (FAISS + SQLite; the kind follows the size and ``--memory-budget``), publishes
the images into LanceDB and into Qdrant's embedded mode (`stores.publish`: the store's ANN index above
``--exact-max``, tuned to recall@10 >= 0.95 and recorded), then, for each store in a fresh process,
opens the index and measures: RSS at open and its peak while serving (VmHWM), engine search p50 (text ->
image, k=10), the store's raw search p50, counterfactual p50 (image side, increase, k=10; the engine's
time beyond encoding), and recall@10 against exact search for text queries and for the engine's own path
queries (every query the engine sent to the store during the counterfactuals).

    python scripts/bench_stores.py --sizes 100000 1000000 --workdir /tmp/bench_stores

Qdrant's embedded mode writes every point to SQLite with a commit of its own (15 ms each on this disk),
so its directory is put on tmpfs (``--qdrant-dir``, default /dev/shm): its bytes are RAM, not counted in
the serving process's RSS, and reported beside it. It holds every point as Python objects (100k: 3.8 GB
RSS; 1M was killed by the out-of-memory killer at 17 GB on a 23 GB machine), so above
``--qdrant-local-max`` it is not run: the embedded mode is for tests and small collections. It searches exactly (numpy over all points); a Qdrant
server's HNSW is tuned the same way as LanceDB's index (not measured here: no server on this machine).
The model is `bench_scale.StandIn` (width 512, encoding time subtracted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench_scale import StandIn, du, exact_top, recall, rss, write_layout  # noqa: E402

STORES = ("faiss", "lancedb", "qdrant+local")


def open_any(kind: str, path: Path):  # noqa: ANN201
    from counterclip.index_builder.index import Index
    from counterclip.index_builder.stores.store_index import StoreIndex

    return Index.open(path) if kind == "faiss" else StoreIndex.open(path)


def serve(kind: str, index_dir: Path, queries_file: Path, n_cf: int, n_search: int) -> dict:
    """The serving process of one store: open, search, counterfactuals; RSS; the engine's queries."""
    import faiss

    from counterclip.engine import Engine

    faiss.omp_set_num_threads(1)
    data = np.load(queries_file, allow_pickle=False)
    texts = json.loads(str(data["texts"]))
    model = StandIn(dict(zip(texts, data["vectors"], strict=True)))
    t0 = time.perf_counter()
    index = open_any(kind, index_dir)
    engine = Engine(index, model)
    open_s, at_open = time.perf_counter() - t0, rss()
    images = index.images
    search, recorded = images.search, []

    def recording(xq, k, where=None):  # noqa: ANN001, ANN202
        recorded.append(np.array(xq, np.float32))
        return search(xq, k, where)

    engine.search(text=texts[0], k=10)  # first-use costs (samples, calibration) out of the figures
    timed, raw = [], []
    for i in range(n_search):
        t = time.perf_counter()
        engine.search(text=texts[i % len(texts)], k=10)
        timed.append(time.perf_counter() - t)
        t = time.perf_counter()
        search(data["vectors"][i % len(texts)][None], 10)
        raw.append(time.perf_counter() - t)
    images.search = recording
    ids = np.sort(images.ids)[np.random.default_rng(1).choice(min(images.count, 1000), n_cf, replace=False)]
    cf, beyond, verdicts = [], [], {}
    for i in range(n_cf):
        model.encode_seconds = 0.0
        t = time.perf_counter()
        result = engine.counterfactuals(image=int(ids[i]), text=texts[i % len(texts)], k=10)
        cf.append(time.perf_counter() - t)
        beyond.append(cf[-1] - model.encode_seconds)
        for item in result.items:
            verdicts[item.verdict] = verdicts.get(item.verdict, 0) + 1
    peak = rss()
    path_q = np.concatenate(recorded) if recorded else np.empty((0, 512), np.float32)
    sample = path_q[np.random.default_rng(2).choice(len(path_q), min(500, len(path_q)), replace=False)]
    _, path_got = search(sample, 10)
    _, text_got = search(data["vectors"], 10)
    _, heldout_got = search(data["heldout"], 10)
    np.save(queries_file.with_name(f"path-{kind.replace('+', '_')}.npy"), sample)
    return {
        "open_seconds": round(open_s, 2),
        "rss_at_open_mb": round(at_open["VmRSS"]),
        "rss_peak_mb": round(peak["VmHWM"]),
        "search_p50_ms": round(1000 * float(np.median(timed)), 2),
        "store_search_p50_ms": round(1000 * float(np.median(raw)), 2),
        "counterfactual_p50_ms": round(1000 * float(np.median(beyond)), 1),
        "counterfactual_queries": n_cf,
        "verdicts": verdicts,
        "path_got": path_got.tolist(),
        "text_got": text_got.tolist(),
        "heldout_got": heldout_got.tolist(),
    }


def heldout_captions(index_dir: Path, tuning_sample: int, size: int) -> np.ndarray:
    """``size`` caption vectors the stores' tuning never saw (not among the ``tuning_sample`` captions
    `stores.publish` draws as its text queries, same seed): the text queries of the recall check, many
    enough to read recall to about +-0.01 (the 20 known texts alone give +-0.04)."""
    from counterclip.index_builder.index import Index

    with Index.open(index_dir) as idx:
        ids = np.asarray(idx.captions.ids)
        tuned = (
            ids
            if len(ids) <= tuning_sample
            else np.random.default_rng(2).choice(ids, tuning_sample, replace=False)
        )
        rest = np.setdiff1d(ids, tuned)
        chosen = np.sort(np.random.default_rng(7).choice(rest, min(size, len(rest)), replace=False))
        return np.asarray(idx.captions.vectors(chosen), dtype=np.float32)


def publish_all(work: Path, n: int, args: argparse.Namespace) -> dict[str, dict]:
    """Each store filled from the FAISS index; its side directory moved beside (the index keeps none)."""
    from counterclip.index_builder.stores.publish import publish_to_store
    from counterclip.index_builder.stores.side import SAMPLE_NAME, SIDE_NAME

    places = {
        "lancedb": f"lancedb://{work}/lance/images",
        "qdrant+local": f"qdrant+local://{args.qdrant_dir}/images",
    }
    shutil.rmtree(args.qdrant_dir, ignore_errors=True)
    out = {}
    for kind, uri in places.items():
        if kind == "qdrant+local" and n > args.qdrant_local_max:
            print(f"  {kind}: not run above {args.qdrant_local_max} vectors (--qdrant-local-max)", flush=True)
            continue
        t0 = time.perf_counter()
        done = publish_to_store(work / "idx", uri, exact_max=args.exact_max, captions=False)
        side = work / f"side-{kind.replace('+', '_')}"
        side.mkdir(exist_ok=True)
        for name in (SIDE_NAME, SAMPLE_NAME):
            shutil.move(work / "idx" / name, side / name)
        where = Path(uri.split("://", 1)[1]).parent
        ann = done["images"]["ann"]
        out[kind] = {
            "side": str(side),
            "publish_seconds": round(time.perf_counter() - t0, 1),
            "store_bytes": du(where),
            "search": {
                k: ann.get(k)
                for k in ("kind", "params", "search_params", "recall_at_k", "recall_by_query", "seconds")
            },
        }
        print(
            f"  {kind}: published in {out[kind]['publish_seconds']} s, {json.dumps(out[kind]['search'])}",
            flush=True,
        )
    return out


def bench_size(n: int, args: argparse.Namespace) -> list[dict]:
    from counterclip.index_builder.config import IndexCfg
    from counterclip.index_builder.interop import import_clip_retrieval

    work = Path(args.workdir) / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    queries = write_layout(work / "cr", n, Path(args.workdir))
    texts = list(queries)
    qfile = work / "queries.npz"
    cfg = IndexCfg(name="bench", exact_max=args.exact_max, recall_sample=500)
    t0 = time.perf_counter()
    summary = import_clip_retrieval(
        work / "cr",
        work / "idx",
        StandIn(queries),
        memory_budget=args.memory_budget,
        config=cfg,
        progress=False,
    )
    print(
        f"n={n}: FAISS index {summary.images_index['factory']} in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    shutil.rmtree(work / "cr", ignore_errors=True)
    heldout = heldout_captions(work / "idx", cfg.recall_sample, args.heldout)
    np.savez(qfile, texts=json.dumps(texts), vectors=np.stack([queries[t] for t in texts]), heldout=heldout)
    published = publish_all(work, n, args)
    dirs = {"faiss": work / "idx", **{k: Path(v["side"]) for k, v in published.items()}}
    text_q = np.stack([queries[t] for t in texts])
    truth_text = exact_top(work / "idx", text_q, 10)
    rows = []
    for kind in [k for k in STORES if k in dirs]:
        argv = [
            sys.executable,
            __file__,
            "--serve",
            kind,
            str(dirs[kind]),
            str(qfile),
            str(args.cf_queries),
            str(args.search_queries),
        ]
        child = subprocess.run(argv, capture_output=True, text=True)
        if child.returncode != 0:  # e.g. the out-of-memory killer: recorded, the other stores go on
            row = {"n": n, "store": kind, "error": f"serving process ended with {child.returncode}"}
            print(json.dumps(row), child.stderr[-2000:], flush=True)
            rows.append(row)
            continue
        served = json.loads(child.stdout.strip().splitlines()[-1])
        path_q = np.load(qfile.with_name(f"path-{kind.replace('+', '_')}.npy"))
        row = {
            "n": n,
            "store": kind,
            "search": {
                "kind": summary.images_index["factory"],
                **summary.images_index.get("search_params", {}),
            }
            if kind == "faiss"
            else published[kind]["search"],
            "publish_seconds": published.get(kind, {}).get("publish_seconds"),
            "disk_bytes": du(work / "idx") if kind == "faiss" else published[kind]["store_bytes"],
            "recall_at_10_text": recall(np.array(served.pop("text_got")), truth_text),
            "recall_at_10_heldout_captions": recall(
                np.array(served.pop("heldout_got")), exact_top(work / "idx", heldout, 10)
            ),
            "recall_at_10_engine_path": recall(
                np.array(served.pop("path_got")), exact_top(work / "idx", path_q, 10)
            ),
            **served,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    if not args.keep:
        shutil.rmtree(args.qdrant_dir, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    """The figures as a Markdown table."""
    head = "| N | store | search | RSS open / peak MB | search p50 ms (store) | counterfactual p50 ms | recall@10 text / held-out captions / path | publish s |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['store']} | {r['error']} |" + " |" * 5)
            continue
        s = r["search"]
        kind = s.get("kind", "")
        params = (
            ", ".join(f"{k}={v}" for k, v in (s.get("search_params") or {}).items())
            if "search_params" in s
            else ""
        )
        lines.append(
            f"| {r['n']:,} | {r['store']} | {kind} {params} | {r['rss_at_open_mb']} / {r['rss_peak_mb']} | "
            f"{r['search_p50_ms']} ({r['store_search_p50_ms']}) | {r['counterfactual_p50_ms']} | "
            f"{r['recall_at_10_text']:.3f} / {r['recall_at_10_heldout_captions']:.3f} / {r['recall_at_10_engine_path']:.3f} | {r['publish_seconds'] or '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        kind, path, qfile, n_cf, n_search = sys.argv[2:7]
        print(json.dumps(serve(kind, Path(path), Path(qfile), int(n_cf), int(n_search))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--workdir", default="/tmp/bench_stores")
    parser.add_argument("--qdrant-dir", default="/dev/shm/bench_stores_qdrant")
    parser.add_argument("--memory-budget", default="2GB")
    parser.add_argument(
        "--exact-max", type=int, default=100_000, help="exact search up to this many (all stores)"
    )
    parser.add_argument("--cf-queries", type=int, default=10)
    parser.add_argument("--heldout", type=int, default=1000, help="held-out caption queries for recall")
    parser.add_argument("--search-queries", type=int, default=50)
    parser.add_argument(
        "--qdrant-local-max",
        type=int,
        default=200_000,
        help="Qdrant's embedded mode above this many vectors is not run (100k: 3.8 GB RSS; 1M: killed at 17 GB)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the Qdrant directory")
    parser.add_argument("--json", default=None, help="write the rows here too")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rows += bench_size(n, args)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
