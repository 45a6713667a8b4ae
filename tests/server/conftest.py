"""Server test fixtures: the colour engine and a TestClient, and a small real shapes index with the
bundled model (for maps, reports and the Client). Helpers live in `server_kit`."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from server_kit import LOCAL, ColourEngine, ThreadServer, make_colour_engine  # noqa: E402

from counterclip.engine import Engine  # noqa: E402
from counterclip.server.app import create_app  # noqa: E402
from counterclip.server.settings import ServerSettings  # noqa: E402


@pytest.fixture()
def colour_engine(tmp_path: Path) -> ColourEngine:
    root = tmp_path / "images"
    root.mkdir()
    return make_colour_engine(root)


@pytest.fixture()
def client(colour_engine: ColourEngine) -> TestClient:
    with TestClient(create_app(colour_engine, ServerSettings(workers=2)), base_url=LOCAL) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def shapes_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 shapes images with sidecar captions plus the shapes vocabulary, indexed with the bundled model."""
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder
    from counterclip.shapes import vocabulary as shapes_vocabulary

    base = tmp_path_factory.mktemp("shapes")
    generate_folder(base / "images", n=24, seed=5)
    vocab = base / "vocab.txt"
    vocab.write_text("\n".join(shapes_vocabulary()[:300]) + "\n", encoding="utf-8")
    build_index(
        base / "images", base / "idx", model="bundled:shapes", vocab=vocab, device="cpu", progress=False
    )
    return base / "idx"


@pytest.fixture(scope="module")
def shapes_engine(shapes_index: Path) -> Engine:
    engine = Engine.open(shapes_index, device="cpu")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def shapes_server(shapes_engine: Engine) -> ThreadServer:
    with ThreadServer(create_app(shapes_engine, ServerSettings(workers=2))) as server:
        yield server
