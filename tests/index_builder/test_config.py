"""Index recipes: named JSON configs with a registry; unknown keys are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from counterclip.errors import InputError
from counterclip.index_builder import IndexCfg, add_index_config, list_index_configs, load_index_config


def test_shipped_recipes_load() -> None:
    assert {"default", "exact", "compact"} <= set(list_index_configs())
    for name in ("default", "exact", "compact"):
        cfg = load_index_config(name)
        assert cfg.name == name and isinstance(cfg, IndexCfg)
    assert load_index_config("default") == IndexCfg(name="default")  # the JSON spells out the defaults
    assert load_index_config("exact").exact_max > 10**9


def test_overrides_and_user_recipes(tmp_path: Path) -> None:
    assert load_index_config("default", batch_size=8, workers=None).batch_size == 8
    path = tmp_path / "tiny-shards.json"
    path.write_text(json.dumps({"shard_size": 16}))
    assert add_index_config(path) == "tiny-shards"
    assert "tiny-shards" in list_index_configs()
    assert load_index_config("tiny-shards").shard_size == 16
    assert load_index_config(str(path)).shard_size == 16


def test_bad_recipes_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown index config 'nope'"):
        load_index_config("nope")
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"shard_sise": 16}))
    with pytest.raises(InputError, match=r"unknown index config key\(s\) \['shard_sise'\]"):
        load_index_config(path)
    with pytest.raises(InputError, match="shard_size must be >= 1"):
        IndexCfg(shard_size=0)
    assert IndexCfg.from_dict(IndexCfg(seed=3).to_dict()) == IndexCfg(seed=3)
