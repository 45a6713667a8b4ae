"""--runtime / --precision on build, update, search and counterfactual: the runtime an index records, queries
across runtimes, int8 refused with nothing written, the stale rule on int8 vectors, and the cold text search
that never imports torch (issue 19). Bundled model on a few dozen shapes images; one ONNX cache per module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from counterclip.cli import run  # noqa: E402
from counterclip.engine import Engine  # noqa: E402
from counterclip.errors import QuantizationRefusedError, RuntimeExportError  # noqa: E402
from counterclip.index_builder import Index, build_index, update_index  # noqa: E402
from counterclip.index_builder.manifest import Manifest, ModelRecord  # noqa: E402
from counterclip.models.onnx_common import CACHE_ENV, combine_cosines  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
QUERIES = ["a red circle", "a small blue square at the top", "a green star"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """One shapes folder, its vocabulary, and three indexes of it: torch, onnx fp32 and onnx int8-dynamic."""
    from counterclip.shapes import generate_folder

    root = tmp_path_factory.mktemp("runtime")
    folder = root / "shapes"
    generate_folder(folder, n=48, seed=7, size=64)
    (root / "vocab.txt").write_text("a red circle\na blue square\na green star\na small purple cross\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root / "onnx-cache"))
        for runtime, precision in (("torch", None), ("onnx", None), ("onnx", "int8-dynamic")):
            name = precision or runtime
            build_index(
                folder,
                root / f"{name}.idx",
                model="bundled:shapes",
                vocab=root / "vocab.txt",
                device="cpu",
                progress=False,
                runtime=runtime,
                precision=precision,
            )
        yield root


@pytest.fixture()
def cache(built: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(built / "onnx-cache"))
    return built / "onnx-cache"


def _top(engine: Engine, text: str, k: int = 5) -> tuple[list[int], np.ndarray]:
    result = engine.search(text=text, k=k)
    return [i.id for i in result.items], np.array([i.score_after for i in result.items])


def test_runtime_is_recorded_and_shown_by_info(built: Path, cache: Path, capsys) -> None:
    torch_rt = Manifest.read(built / "torch.idx").model.runtime
    onnx_rt = Manifest.read(built / "onnx.idx").model.runtime
    int8_rt = Manifest.read(built / "int8-dynamic.idx").model.runtime
    import onnxruntime
    import torch

    assert torch_rt == {
        "runtime": "torch",
        "precision": "fp32",
        "version": torch.__version__,
        "tolerance_cosine": 1.0,
    }
    assert onnx_rt["runtime"] == "onnx" and onnx_rt["precision"] == "fp32"
    assert onnx_rt["version"] == onnxruntime.__version__ and onnx_rt["tolerance_cosine"] == 0.9999
    assert set(onnx_rt["vs_torch"]) == {"image", "text"}
    assert all(v["cosine_min"] >= 0.9999 for v in onnx_rt["vs_torch"].values())
    # int8: its measured figures against fp32, and a tolerance of both bars (angles add)
    assert int8_rt["precision"] == "int8-dynamic"
    assert int8_rt["vs_fp32"]["cosine_min"] >= 0.99 and int8_rt["vs_fp32"]["recall_at_10"] >= 0.98
    assert int8_rt["vs_fp32"]["check_images"] == 48
    assert int8_rt["tolerance_cosine"] == pytest.approx(combine_cosines(0.9999, 0.99), abs=1e-6)
    # the figures are real: int8 stored vectors vs torch re-encodings of the same files
    with Index.open(built / "int8-dynamic.idx") as idx, Index.open(built / "torch.idx") as ref:
        ids = np.asarray(idx.images.ids)
        paths = [m["path"] for m in idx.images.meta(ids)]
        ref_ids = [ref.image_id_for_path(built / "shapes" / p) for p in paths]
        cos = (idx.images.vectors(ids) * ref.images.vectors(ref_ids)).sum(1)
    assert cos.min() >= int8_rt["tolerance_cosine"] and cos.min() < 1.0 - 1e-6

    assert run(["info", str(built / "int8-dynamic.idx"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["runtime"]
    assert shown == int8_rt
    assert run(["info", str(built / "onnx.idx")]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("runtime"))
    assert line.startswith(f"runtime    onnx {onnxruntime.__version__} fp32: cosine to torch image ")


def test_old_manifest_without_runtime_reads_as_torch(built: Path) -> None:
    data = Manifest.read(built / "torch.idx").model.to_dict()
    data.pop("runtime")
    record = ModelRecord.from_dict(data)
    assert record.runtime is None and record.runtime_name == "torch"
    assert "runtime" not in record.to_dict()  # and it writes back as it was (same manifest checksum)


@pytest.mark.parametrize("built_with", ["torch", "onnx"])
def test_an_index_of_one_runtime_queries_with_the_other(built: Path, cache: Path, built_with: str) -> None:
    index_dir = built / f"{built_with}.idx"
    with (
        Engine.open(index_dir, device="cpu") as by_torch,
        Engine.open(index_dir, device="cpu", runtime="onnx") as by_onnx,
    ):
        for text in QUERIES:
            ids_t, scores_t = _top(by_torch, text)
            ids_o, scores_o = _top(by_onnx, text)
            assert ids_t == ids_o
            np.testing.assert_allclose(scores_t, scores_o, atol=2e-3)  # scores are ~100 x cos
        # image queries re-encoded by each runtime find the same neighbours
        query = str(built / "shapes" / "000003.png")
        assert [i.id for i in by_torch.search(image=query, k=5).items] == [
            i.id for i in by_onnx.search(image=query, k=5).items
        ]
    # and the two indexes hold the same vectors up to the export's tolerance
    with Index.open(built / "torch.idx") as a, Index.open(built / "onnx.idx") as b:
        ids = np.asarray(a.images.ids)
        assert (a.images.vectors(ids) * b.images.vectors(ids)).sum(1).min() >= 0.9999


def test_counterfactual_cli_with_either_runtime(built: Path, cache: Path, capsys) -> None:
    args = [
        "counterfactual",
        str(built / "int8-dynamic.idx"),
        "--image",
        str(built / "shapes" / "000001.png"),
    ]
    args += ["--text", "a red circle", "-k", "3", "--device", "cpu", "--json", "--runtime"]
    found = {}
    for runtime in ("torch", "onnx"):
        assert run([*args, runtime]) == 0
        payload = json.loads(capsys.readouterr().out)
        assert payload["stale"] == [] and payload["items"]
        found[runtime] = payload
    assert [i["id"] for i in found["torch"]["items"]] == [i["id"] for i in found["onnx"]["items"]]
    np.testing.assert_allclose(
        [i["score_after"] for i in found["torch"]["items"]],
        [i["score_after"] for i in found["onnx"]["items"]],
        atol=2e-3,
    )


def test_int8_index_is_not_reported_stale(built: Path, cache: Path) -> None:
    from counterclip.engine.verify import stale_cosine

    index_dir = built / "int8-dynamic.idx"
    with Engine.open(index_dir, device="cpu") as engine:
        # stored int8 vectors, torch re-encodings: the tolerance adds the index's and the encoder's angles
        assert stale_cosine(engine.index, engine.encoder) == pytest.approx(
            combine_cosines(0.999, combine_cosines(0.9999, 0.99)), abs=1e-6
        )
        query = str(built / "shapes" / "000001.png")
        for text in ("a red circle", "a blue square"):
            result = engine.counterfactuals(image=query, text=text, k=3)
            assert result.stale == []
            assert result.items and all(i.verdict is not None for i in result.items)
    with Engine.open(built / "torch.idx", device="cpu") as engine:
        assert stale_cosine(engine.index, engine.encoder) == pytest.approx(
            0.999, abs=1e-9
        )  # torch on torch: unchanged
    with Engine.open(built / "torch.idx", device="cpu", runtime="onnx") as engine:
        assert stale_cosine(engine.index, engine.encoder) == pytest.approx(
            combine_cosines(0.999, 0.9999), abs=1e-9
        )


def test_update_keeps_the_recorded_runtime(built: Path, cache: Path, tmp_path: Path) -> None:
    import shutil

    from counterclip.shapes import generate_folder

    folder = tmp_path / "shapes"
    generate_folder(folder, n=6, seed=11, size=64)
    build_index(
        folder, tmp_path / "i.idx", model="bundled:shapes", device="cpu", progress=False, runtime="onnx"
    )
    shutil.copy(built / "shapes" / "000000.png", folder / "new.png")
    summary = update_index(tmp_path / "i.idx", device="cpu", progress=False)
    assert summary.added == 1
    runtime = Manifest.read(tmp_path / "i.idx").model.runtime
    assert runtime["runtime"] == "onnx" and "embedded_with" not in runtime
    with Index.open(tmp_path / "i.idx") as idx, Index.open(built / "torch.idx") as ref:
        new = idx.image_id_for_path(folder / "new.png")
        old = ref.image_id_for_path(built / "shapes" / "000000.png")
        assert float(idx.images.vectors([new])[0] @ ref.images.vectors([old])[0]) >= 0.9999
    # an update by the other runtime records both, and the lower tolerance
    shutil.copy(built / "shapes" / "000002.png", folder / "new2.png")
    update_index(tmp_path / "i.idx", device="cpu", progress=False, runtime="torch")
    runtime = Manifest.read(tmp_path / "i.idx").model.runtime
    assert runtime["runtime"] == "torch" and runtime["embedded_with"] == ["onnx/fp32", "torch/fp32"]
    assert runtime["tolerance_cosine"] == 0.9999


def test_precision_needs_runtime_onnx(built: Path, tmp_path: Path, capsys) -> None:
    idx = tmp_path / "x.idx"
    assert run(["build", str(built / "shapes"), "--index", str(idx), "--precision", "int8-dynamic"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--precision int8-dynamic needs --runtime onnx" in err and len(err.splitlines()) == 1
    assert not idx.exists()
    for argv in (
        ["search", str(built / "torch.idx"), "--text", "a", "--runtime", "torch", "--precision", "fp32"],
        ["counterfactual", str(built / "torch.idx"), "--image", "#1", "--text", "a", "--precision", "fp32"],
        ["update", str(built / "torch.idx"), "--precision", "int8-static"],
        ["search", str(built / "torch.idx"), "--text", "a", "--runtime", "tensorrt"],
    ):
        assert run(argv) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # ONNX sessions stay in the process that made them: not with Ray actors or shard workers
    for extra in (["--engine", "ray"], ["--shard", "0/2"]):
        assert run(["build", str(built / "shapes"), "--index", str(idx), "--runtime", "onnx", *extra]) == 2
        assert "--runtime onnx embeds in this process" in capsys.readouterr().err
        assert not idx.exists()


def test_without_onnxruntime_the_error_names_the_extra(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import counterclip.models.onnx_common as common
    import counterclip.models.onnx_runtime as onnx_runtime

    monkeypatch.setattr(common, "onnxruntime_available", lambda: False)
    monkeypatch.setattr(onnx_runtime, "onnxruntime_available", lambda: False)
    idx = tmp_path / "x.idx"
    assert run(["build", str(built / "shapes"), "--index", str(idx), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'counterclip[onnx]'" in err and len(err.splitlines()) == 1
    assert not idx.exists()
    with pytest.raises(RuntimeExportError, match=r"counterclip\[onnx\]"):
        Engine.open(built / "torch.idx", device="cpu", runtime="onnx").close()


def test_refused_int8_leaves_no_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tiny_models import write_broken_for_int8

    from counterclip.shapes import generate_folder

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    # a tiny open_clip whose int8 image tower really breaks (fp32 is unaffected)
    spec = write_broken_for_int8(tmp_path / "broken")
    folder = tmp_path / "shapes"
    generate_folder(folder, n=24, seed=3, size=48)

    idx = tmp_path / "int8.idx"
    with pytest.raises(QuantizationRefusedError, match="on 24 of your images"):
        build_index(
            folder, idx, model=spec, device="cpu", progress=False, runtime="onnx", precision="int8-dynamic"
        )
    assert not idx.exists()
    argv = ["build", str(folder), "--index", str(idx), "--model", spec, "--runtime", "onnx"]
    assert run([*argv, "--precision", "int8-static"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "int8-static image tower" in err and "refused" in err
    assert "needs >= 0.99" in err and "needs >= 0.98" in err
    assert not idx.exists()
    # the same model in fp32 builds fine
    assert run([*argv, "--json"]) == 0
    assert Manifest.read(idx).model.runtime["precision"] == "fp32"


COLD = """
import json, sys
from counterclip.cli import run
code = run(sys.argv[1:])
sys.stderr.write(json.dumps({"code": code, "torch": "torch" in sys.modules}) + "\\n")
"""


def _cli(args: list[str], cache: Path) -> tuple[dict, dict]:
    env = {**os.environ, CACHE_ENV: str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", COLD, *args], capture_output=True, text=True, env=env, cwd=REPO, check=False
    )
    status = json.loads(done.stderr.strip().splitlines()[-1])
    return status, json.loads(done.stdout) if status["code"] == 0 else {}


@pytest.mark.parametrize(("name", "runtime"), [("torch", "auto"), ("onnx", "onnx"), ("int8-dynamic", "auto")])
def test_cold_text_search_does_not_import_torch(built: Path, cache: Path, name: str, runtime: str) -> None:
    index_dir = str(built / f"{name}.idx")  # the text tower is the same for all three indexes
    args = ["search", index_dir, "--text", "a red circle", "-k", "5", "--json", "--runtime"]
    status, cold = _cli([*args, runtime], cache)
    assert status == {"code": 0, "torch": False}
    status, warm = _cli([*args, "torch"], cache)
    assert status == {"code": 0, "torch": True}
    assert [i["id"] for i in cold["items"]] == [i["id"] for i in warm["items"]]
    np.testing.assert_allclose(
        [i["score_after"] for i in cold["items"]], [i["score_after"] for i in warm["items"]], atol=2e-3
    )
    assert [i["p_match"] for i in cold["items"]] == pytest.approx(
        [i["p_match"] for i in warm["items"]], abs=1e-3
    )
    assert cold["warnings"] == warm["warnings"]


def test_cold_path_falls_back_to_torch_without_a_cached_tower(built: Path, tmp_path: Path) -> None:
    status, _ = _cli(
        ["search", str(built / "torch.idx"), "--text", "a red circle", "--json"], tmp_path / "empty"
    )
    assert status == {"code": 0, "torch": True}  # auto: nothing cached, the model is loaded
    status, found = _cli(
        ["search", str(built / "torch.idx"), "--text", "a red circle", "--json", "--runtime", "onnx"],
        tmp_path / "empty",
    )
    assert status == {"code": 0, "torch": True} and found["items"]  # onnx: exported now...
    status, _ = _cli(
        ["search", str(built / "torch.idx"), "--text", "a red circle", "--json", "--runtime", "onnx"],
        tmp_path / "empty",
    )
    assert status == {"code": 0, "torch": False}  # ...and cold from the next query on
