from __future__ import annotations

import multiprocessing
from pathlib import Path

import torch

from affect_llm.features.cache import FeatureCache


def _key(cache: FeatureCache, sample: str = "s1") -> str:
    return cache.key(sample, "abc123", "whisper-tiny@deadbeef", {"num_frames": 8, "fps": None})


def test_key_depends_on_every_input(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    base = cache.key("s", "h", "enc", {"k": 8})
    assert base == cache.key("s", "h", "enc", {"k": 8})
    others = {cache.key("t", "h", "enc", {"k": 8}), cache.key("s", "g", "enc", {"k": 8})}
    others |= {cache.key("s", "h", "enc2", {"k": 8}), cache.key("s", "h", "enc", {"k": 16})}
    assert base not in others and len(others) == 4


def test_hit_does_not_recompute(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    calls = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"features": torch.randn(5, 4), "mask": torch.ones(5, dtype=torch.bool)}

    key = _key(cache)
    first = cache.get_or_compute(key, compute, {"encoder": "x"})
    second = cache.get_or_compute(key, compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(first["features"], second["features"]) and second["mask"].dtype == torch.bool
    assert cache.path(key).parent.name == key[:2]
    assert cache.get_with_meta(key)[1] == {"encoder": "x"}


def test_truncated_entry_is_deleted_and_recomputed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    path = cache.put(key, {"features": torch.randn(64, 16)})
    path.write_bytes(path.read_bytes()[:-100])
    assert cache.get(key) is None
    assert cache.corrupt == 1 and not path.exists()
    fresh = cache.get_or_compute(key, lambda: {"features": torch.zeros(2, 2)})
    assert torch.equal(fresh["features"], torch.zeros(2, 2))
    assert torch.equal(cache.get(key)["features"], torch.zeros(2, 2))


def test_flipped_byte_fails_checksum(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    path = cache.put(key, {"features": torch.ones(8, 8)})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the tensor bytes: the file still parses
    path.write_bytes(bytes(data))
    assert cache.get(key) is None and cache.corrupt == 1


def _writer(root: str, key: str, value: float, rounds: int) -> None:
    cache = FeatureCache(root)
    for _ in range(rounds):
        cache.put(key, {"features": torch.full((256, 64), value)})


def test_two_processes_writing_one_key_leave_a_whole_entry(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = _key(cache)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), key, float(v), 20)) for v in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    found = cache.get(key)
    assert found is not None and cache.corrupt == 0
    assert found["features"].unique().numel() == 1 and found["features"][0, 0].item() in (1.0, 2.0)
    assert [p.name for p in cache.path(key).parent.iterdir()] == [f"{key}.safetensors"]
