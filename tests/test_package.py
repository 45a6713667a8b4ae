"""The package façade: public names resolve to their defining objects, and importing it stays cheap."""

import subprocess
import sys

import pytest

import counterclip


def test_public_names_are_the_defining_objects() -> None:
    from counterclip.client import Client
    from counterclip.engine import Engine, EngineOptions
    from counterclip.index_builder import Index, build_index, update_index
    from counterclip.models import ClipModel, ModelSpec, load_model

    expected = {
        "Client": Client,
        "ClipModel": ClipModel,
        "Engine": Engine,
        "EngineOptions": EngineOptions,
        "Index": Index,
        "ModelSpec": ModelSpec,
        "build_index": build_index,
        "load_model": load_model,
        "update_index": update_index,
    }
    for name, obj in expected.items():
        assert getattr(counterclip, name) is obj
    assert set(expected) | {"CounterclipError", "__version__"} == set(counterclip.__all__)
    assert set(counterclip.__all__) <= set(dir(counterclip))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Engin'"):
        counterclip.Engin  # noqa: B018


def test_import_and_cli_help_do_not_import_torch() -> None:
    # a fresh interpreter: this test process has imported torch long ago
    code = (
        "import sys, counterclip, counterclip.cli; "
        "heavy = [m for m in ('torch', 'faiss', 'open_clip', 'transformers') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_the_wheel_ships_py_typed(tmp_path) -> None:
    """Type checkers read the package's annotations: the wheel carries the ``py.typed`` marker."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    source = Path(__file__).resolve().parents[1]
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(source / name, tmp_path / name)
    shutil.copytree(
        source / "counterclip", tmp_path / "counterclip", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ".", "-w", "dist"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("counterclip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "counterclip/py.typed" in names and "counterclip/engine/search.py" in names
