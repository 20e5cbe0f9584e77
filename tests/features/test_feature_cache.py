"""The sharded feature cache: keys, hits, corrupt entries as misses, concurrent writers, dtypes, size."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from affect_llm.features.cache import FeatureCache


def _key(sample: str = "s1") -> str:
    return FeatureCache.key(sample, "abc123", "whisper-tiny@deadbeef", {"num_frames": 8, "fps": None})


def _data_files(root: Path) -> list[Path]:
    return sorted((root / "shards").glob("*.data"))


def test_key_depends_on_every_input() -> None:
    base = FeatureCache.key("s", "h", "enc", {"k": 8})
    assert base == FeatureCache.key("s", "h", "enc", {"k": 8})
    others = {FeatureCache.key("t", "h", "enc", {"k": 8}), FeatureCache.key("s", "g", "enc", {"k": 8})}
    others |= {FeatureCache.key("s", "h", "enc2", {"k": 8}), FeatureCache.key("s", "h", "enc", {"k": 16})}
    assert base not in others and len(others) == 4


def test_hit_does_not_recompute(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    calls = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"features": torch.randn(5, 4), "mask": torch.ones(5, dtype=torch.bool)}

    first = cache.get_or_compute(_key(), compute, {"encoder": "x"})
    second = cache.get_or_compute(_key(), compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(first["features"], second["features"]) and second["mask"].dtype == torch.bool
    assert cache.get_with_meta(_key())[1] == {"encoder": "x"}


def test_a_new_instance_reads_what_another_wrote(tmp_path: Path) -> None:
    FeatureCache(tmp_path).put(_key(), {"features": torch.arange(6.0).reshape(2, 3)})
    assert torch.equal(FeatureCache(tmp_path).get(_key())["features"], torch.arange(6.0).reshape(2, 3))


def test_entries_keep_their_dtype(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    for dtype in (torch.float16, torch.bfloat16):
        key = _key(str(dtype))
        cache.put(key, {"features": torch.randn(3, 4).to(dtype)})
        assert FeatureCache(tmp_path).get(key)["features"].dtype == dtype


def test_entries_are_packed_into_one_shard_per_writer(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    for i in range(50):
        cache.put(_key(f"s{i}"), {"features": torch.randn(4, 4)})
    assert len(_data_files(tmp_path)) == 1
    stats = FeatureCache(tmp_path).stats()
    assert (stats.entries, stats.shards) == (50, 1) and stats.bytes == _data_files(tmp_path)[0].stat().st_size
    assert "50 entries" in stats.describe()


def test_a_full_shard_rolls_over_to_a_new_file(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, max_shard_bytes=1000)
    for i in range(5):
        cache.put(_key(f"s{i}"), {"features": torch.randn(16, 16)})  # > 1000 bytes each
    assert len(_data_files(tmp_path)) == 5
    fresh = FeatureCache(tmp_path)
    assert all(fresh.get(_key(f"s{i}")) is not None for i in range(5))


def test_truncated_shard_is_a_miss_and_is_recomputed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.put(_key(), {"features": torch.randn(64, 16)})
    data = _data_files(tmp_path)[0]
    data.write_bytes(data.read_bytes()[:-100])  # a copy cut short
    reader = FeatureCache(tmp_path)
    assert not reader.contains(_key()) and reader.get(_key()) is None
    fresh = reader.get_or_compute(_key(), lambda: {"features": torch.zeros(2, 2)})
    assert torch.equal(fresh["features"], torch.zeros(2, 2))
    assert torch.equal(FeatureCache(tmp_path).get(_key())["features"], torch.zeros(2, 2))


def test_flipped_byte_fails_checksum_and_stays_bad(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.put(_key(), {"features": torch.ones(8, 8)})
    data = _data_files(tmp_path)[0]
    damaged = bytearray(data.read_bytes())
    damaged[-1] ^= 0xFF  # inside the tensor bytes: the blob still parses
    data.write_bytes(bytes(damaged))
    reader = FeatureCache(tmp_path)
    assert reader.get(_key()) is None and reader.corrupt == 1
    # Recorded as bad: another process no longer even finds it, so featurization encodes it again.
    assert not FeatureCache(tmp_path).contains(_key())


def _run_processes(target, args_list: list[tuple]) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=args) for args in args_list]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0


def _writer(root: str, key: str, value: float, rounds: int) -> None:
    cache = FeatureCache(root)
    for _ in range(rounds):
        cache.put(key, {"features": torch.full((256, 64), value)})
    cache.sync()


def test_two_processes_writing_one_key_leave_whole_entries(tmp_path: Path) -> None:
    _run_processes(_writer, [(str(tmp_path), _key(), float(v), 20) for v in (1, 2)])
    cache = FeatureCache(tmp_path)
    found = cache.get(_key())
    assert found is not None and cache.corrupt == 0
    assert found["features"].unique().numel() == 1 and found["features"][0, 0].item() in (1.0, 2.0)
    assert len(_data_files(tmp_path)) == 2  # one shard per writer: no file is written by two processes


def _many(root: str, first: int) -> None:
    cache = FeatureCache(root)
    for i in range(first, first + 30):
        cache.put(_key(f"s{i}"), {"features": torch.full((8, 8), float(i))})
    cache.sync()


def test_writers_in_parallel_lose_no_entry(tmp_path: Path) -> None:
    _run_processes(_many, [(str(tmp_path), start) for start in (0, 30, 60)])
    cache = FeatureCache(tmp_path)
    assert cache.stats().entries == 90
    assert all(cache.get(_key(f"s{i}"))["features"][0, 0].item() == float(i) for i in range(90))


def test_refresh_sees_entries_written_since(tmp_path: Path) -> None:
    reader = FeatureCache(tmp_path)
    assert not reader.contains(_key())
    FeatureCache(tmp_path).put(_key(), {"features": torch.ones(1, 1)})
    assert not reader.contains(_key())  # the index is read once ...
    reader.refresh()  # ... and again when asked (after a barrier)
    assert reader.contains(_key())


def test_keys_must_be_sha256_digests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sha256 hex digest"):
        FeatureCache(tmp_path).get("../etc")


def test_the_size_is_printed_in_a_unit_that_shows_it() -> None:
    from affect_llm.features.cache import CacheStats

    assert CacheStats(480, 1_400_000, 1).describe() == "480 entries, 1.34 MiB in 1 shard files"
    assert CacheStats(4, 8 * 2**30, 4).describe() == "4 entries, 8.00 GiB in 4 shard files"
