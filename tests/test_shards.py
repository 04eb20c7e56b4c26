"""Sharded indexing and the merge step."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.cli import main as indexer_main
from indexer.shards import Shard, parse_shard
from shared.errors import ConfigError
from shared.index_store import load_index


def test_parse_shard_plain():
    assert parse_shard("1/4") == Shard(1, 4)


def test_parse_shard_from_batch_array():
    assert parse_shard("auto/3", {"AWS_BATCH_JOB_ARRAY_INDEX": "2"}) == Shard(2, 3)


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1", "a/b", "0/0", "auto/2"])
def test_parse_shard_rejects(text):
    with pytest.raises(ConfigError):
        parse_shard(text, {})


def test_shard_selects_every_nth():
    assert Shard(1, 3).select(list(range(10))) == [1, 4, 7]


def test_merged_shards_equal_single_run(tmp_path, sample_dir, tiny_model_dir):
    common = [
        "--images", str(sample_dir / "reference"), "--model", str(tiny_model_dir),
        "--csv", str(sample_dir / "species.csv"), "--augmentations", "2", "--no-progress",
    ]
    assert indexer_main([*common, "--out", str(tmp_path / "single")]) == 0
    parts = []
    for shard in range(3):
        part = str(tmp_path / f"part-{shard}")
        assert indexer_main([*common, "--out", part, "--shard", f"{shard}/3"]) == 0
        parts.append(part)
    assert indexer_main(["merge", *parts, "--out", str(tmp_path / "merged")]) == 0

    single = load_index(str(tmp_path / "single"))
    merged = load_index(str(tmp_path / "merged"))
    assert merged.plant_ids == single.plant_ids
    assert np.array_equal(merged.embeddings, single.embeddings)
    assert merged.species == single.species
    assert merged.meta["augmentation"] == single.meta["augmentation"]


def test_merge_rejects_overlap(tmp_path, sample_dir, tiny_model_dir, capsys):
    common = [
        "--images", str(sample_dir / "reference"), "--model", str(tiny_model_dir),
        "--augmentations", "0", "--no-progress",
    ]
    assert indexer_main([*common, "--out", str(tmp_path / "a"), "--shard", "0/2"]) == 0
    code = indexer_main(["merge", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "m")])
    assert code == 2
    assert "more than one part" in capsys.readouterr().err


def test_merge_rejects_other_settings(tmp_path, sample_dir, tiny_model_dir, capsys):
    common = ["--images", str(sample_dir / "reference"), "--model", str(tiny_model_dir), "--no-progress"]
    assert indexer_main([*common, "--out", str(tmp_path / "a"), "--shard", "0/2", "--augmentations", "0"]) == 0
    assert indexer_main([*common, "--out", str(tmp_path / "b"), "--shard", "1/2", "--augmentations", "1"]) == 0
    code = indexer_main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
    assert code == 2
    assert "augmentation" in capsys.readouterr().err


def test_shard_placeholder_in_out(tmp_path, sample_dir, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "1")
    code = indexer_main([
        "--images", str(sample_dir / "reference"), "--model", str(tiny_model_dir),
        "--augmentations", "0", "--no-progress", "--shard", "auto/2", "--out", str(tmp_path / "part-{shard}"),
    ])
    assert code == 0
    part = load_index(str(tmp_path / "part-1"))
    assert part.meta["shard"] == {"index": 1, "count": 2}


def test_shard_placeholder_needs_shard(tmp_path, sample_dir, tiny_model_dir, capsys):
    code = indexer_main([
        "--images", str(sample_dir / "reference"), "--model", str(tiny_model_dir),
        "--out", str(tmp_path / "part-{shard}"),
    ])
    assert code == 2
    assert "{shard}" in capsys.readouterr().err
