"""Featurization with decoding in worker processes: same features as in-process, the cache filled
without holding features, and encoder fingerprints that follow the weight files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from affect_llm.data.manifest import load_manifest
from affect_llm.data.synth import generate_synthetic_set
from affect_llm.features.cache import FeatureCache
from affect_llm.features.decode import ClipJob, decode_batches
from affect_llm.features.featurize import MediaFeaturizer, MediaOptions
from affect_llm.features.fingerprint import encoder_fingerprint, folder_fingerprint
from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list:
    manifest = generate_synthetic_set(tmp_path_factory.mktemp("synth"), seed=1, num_train=20, num_val=0,
                                      num_test_per_cue=0)
    return load_manifest(manifest)


@pytest.fixture(scope="module")
def model_and_processor():
    return build_model(ModelSpec(audio_encoder="tiny:whisper", face_encoder="tiny:fer", audio_window_seconds=4.0,
                                 num_audio_tokens=2, num_face_tokens=2))


def _featurizer(model_and_processor, workers: int, cache: FeatureCache | None = None) -> MediaFeaturizer:
    model, processor = model_and_processor
    return MediaFeaturizer(model, processor, cache, MediaOptions(num_frames=2, decode_workers=workers), batch_size=4)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for row_id in a:
        assert a[row_id].modalities == b[row_id].modalities, row_id
        for modality, part in a[row_id].items():
            assert torch.equal(part.features, b[row_id].get(modality).features), (row_id, modality)


def test_worker_processes_decode_what_the_calling_process_decodes(rows, model_and_processor) -> None:
    inline = _featurizer(model_and_processor, 0)(rows)
    workers = _featurizer(model_and_processor, 2)
    _assert_same(inline, workers(rows))
    assert not workers.failures  # still images decode too (OpenCV is loaded before decord)


def test_decoding_runs_in_other_processes(rows, model_and_processor) -> None:
    class WhereDecoded(ClipJob):
        def __call__(self, row):
            result = super().__call__(row)
            return result, os.getpid()

    model, processor = model_and_processor
    job = WhereDecoded(processor.feature_extractor, model.config.modalities, MediaOptions(num_frames=2))
    pids = {pid for batch in decode_batches(rows, job, batch_size=4, workers=2) for _, pid in batch}
    assert os.getpid() not in pids and len(pids) == 2


def test_fill_caches_every_row_and_reads_back_the_same_features(rows, model_and_processor, tmp_path: Path) -> None:
    filler = _featurizer(model_and_processor, 2, FeatureCache(tmp_path))
    keys = filler.fill(rows)
    assert set(keys) == {r.id for r in rows} and filler.encoded_items > 0
    reader = _featurizer(model_and_processor, 1, FeatureCache(tmp_path))
    cached = reader(rows)
    assert reader.encoded_items == 0  # every row read from the cache (by the worker process)
    _assert_same(_featurizer(model_and_processor, 0)(rows), cached)
    # A second fill finds everything and encodes nothing.
    again = _featurizer(model_and_processor, 1, FeatureCache(tmp_path))
    assert again.fill(rows) == keys and again.encoded_items == 0


def test_features_are_stored_in_a_16_bit_dtype(rows, model_and_processor, tmp_path: Path) -> None:
    featurizer = _featurizer(model_and_processor, 0, FeatureCache(tmp_path))
    keys = featurizer.fill(rows[:2])
    entry = FeatureCache(tmp_path).get(next(iter(keys.values()))["audio"])
    assert entry["features"].dtype == torch.float16  # a float32 encoder's features are halved
    assert featurizer.settings["feature_dtype"] == {"audio": "torch.float16", "face": "torch.float16"}


def test_folder_fingerprint_follows_size_and_mtime(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x" * 10)
    first = folder_fingerprint(tmp_path)
    assert folder_fingerprint(tmp_path) == first
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert folder_fingerprint(tmp_path) != first


def test_encoder_fingerprint_reads_files_not_every_tensor(tmp_path: Path) -> None:
    encoder = torch.nn.Linear(2000, 2000)  # 16 MB of weights
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    started = time.perf_counter()
    first = encoder_fingerprint(encoder, tmp_path)
    assert time.perf_counter() - started < 0.5
    assert encoder_fingerprint(encoder, tmp_path) == first
    with torch.no_grad():
        encoder.weight.add_(0.01)  # trained weights differ from their files: another identity
    assert encoder_fingerprint(encoder, tmp_path) != first
    assert encoder_fingerprint(encoder, None) != encoder_fingerprint(torch.nn.Linear(2000, 2000), None)


def test_concatenated_audio_layers_are_part_of_the_cache_key(rows, tmp_path) -> None:
    # Same weights, other layers concatenated: other features, so the cache must not serve the first ones.
    model, processor = build_model(ModelSpec(audio_encoder="tiny:whisper", audio_window_seconds=4.0,
                                             num_audio_tokens=2))
    cache = FeatureCache(tmp_path)
    row = next(r for r in rows if r.extra.get("cue") == "all")
    options = MediaOptions(num_frames=2)
    last_layer = MediaFeaturizer(model, processor, cache, options)([row])[row.id].get("audio").features
    model.config.audio_feature_layers = [1, 2]
    concatenated = MediaFeaturizer(model, processor, cache, options)([row])[row.id].get("audio").features
    assert concatenated.shape[-1] == 2 * last_layer.shape[-1]
    assert torch.equal(concatenated[..., last_layer.shape[-1]:], last_layer)


def test_a_commit_counts_only_for_a_folder_that_is_its_own_clone(tmp_path: Path) -> None:
    """A model kept inside a project under git must not change identity with each unrelated commit."""
    import subprocess

    from affect_llm.features.fingerprint import folder_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper" / "model.safetensors").write_bytes(b"w")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "model")
    assert folder_commit(tmp_path / "whisper") is None
    assert folder_commit(tmp_path) == git("rev-parse", "HEAD")


def test_the_cache_key_names_the_face_detector_and_no_detection_keeps_the_frames(rows, model_and_processor) -> None:
    from affect_llm.data.faces import FaceCropper

    featurizer = _featurizer(model_and_processor, 0)
    assert featurizer.settings["face_detector"].startswith(FaceCropper().detector_in_use() + ":")
    # Another decoder release may decode other pixels or samples: its version is in the key too.
    assert {"decord", "librosa"} <= set(featurizer.settings["decoders"])
    model, processor = model_and_processor
    # Without detection (faces cropped already) the frame is the face: the channel is kept.
    job = ClipJob(processor.feature_extractor, ("audio", "face"), MediaOptions(num_frames=2, detect_faces=False))
    face_rows = [row for row in rows if row.media_path("video") or row.media_path("image")][:2]
    assert face_rows and all("face" in job.decode(row).modalities for row in face_rows)


def test_a_decode_worker_dies_with_its_parent(tmp_path: Path) -> None:
    """A parent killed outright (the OOM killer) must not leave its forked workers waiting for ever."""
    import signal
    import subprocess
    import sys

    script = (
        "import time, torch\n"
        "from affect_llm.features.decode import die_with_parent, worker_context\n"
        "class Slow(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 100\n"
        "    def __getitem__(self, i):\n"
        "        import os; print('worker', os.getpid(), flush=True); time.sleep(60); return i\n"
        "loader = torch.utils.data.DataLoader(Slow(), num_workers=1, multiprocessing_context=worker_context(),\n"
        "                                     worker_init_fn=die_with_parent)\n"
        "next(iter(loader))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    line = parent.stdout.readline()
    assert line.startswith("worker"), line
    worker = int(line.split()[1])
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"worker {worker} outlived its parent")


def test_a_worker_says_nothing_of_a_handover_its_parent_dropped() -> None:
    """The worker's tensor handover thread reports to sys.excepthook: a reset connection (the parent
    ended mid-handover) prints nothing after the parent's last line; any other error still prints."""
    code = ("import sys\nfrom affect_llm.features.decode import quiet_abandoned_handovers\n"
            "quiet_abandoned_handovers()\n"
            "for error in (ConnectionResetError(104, 'Connection reset by peer'), EOFError(), ValueError('real')):\n"
            "    sys.excepthook(type(error), error, None)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ConnectionResetError" not in done.stderr and "EOFError" not in done.stderr
    assert "ValueError: real" in done.stderr
