"""Fixtures of the serving tests: a tiny checkpoint that answers, a synthetic clip, a running server.

A tiny random model writes noise, and noise has no labels for a page to show. The checkpoint here
is the tiny random model trained for a few seconds to give one structured answer (``servinghelpers.ANSWER``)
to any clip and question, so the tests can check that labels, explanation and evidence travel
from the model through the server to the client and the page exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from servinghelpers import ANSWER_TEXT, ServerProcess

from affect_llm.loading.build import build_model
from affect_llm.loading.checkpoint import save_checkpoint
from affect_llm.loading.spec import ModelSpec

TINY_SPEC = ModelSpec(llm="tiny:llm", audio_encoder="tiny:whisper", face_encoder="tiny:fer",
                      audio_window_seconds=4.0, num_audio_tokens=4, num_face_tokens=2)


def _training_samples(processor, rng: np.random.Generator, count: int) -> list[tuple[list, object]]:
    """Chats with every mix of sound, faces, words and questions the tests send."""
    samples = []
    for i in range(count):
        audio = (0.2 * rng.standard_normal(16_000 * (1 + i % 3))).astype(np.float32) if i % 3 != 2 else None
        face = rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8) if i % 3 != 0 else None
        media = processor.prepare_media(audio=audio, face=face)
        question = (None, "How does the person feel?", "Which emotions are shown?")[i % 3]
        transcript = (None, "I am so glad")[i % 2]
        samples.append((processor.build_messages("reason", media.modalities, transcript, question), media))
    return samples


@pytest.fixture(scope="session")
def answering_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained to answer :data:`ANSWER` (150 AdamW steps, about 10 s on 2 cores)."""
    torch.manual_seed(0)
    model, processor = build_model(TINY_SPEC, seed=0)
    rng = np.random.default_rng(0)
    samples = _training_samples(processor, rng, 12)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        chosen = rng.choice(len(samples), 6, replace=False)
        batch = processor([samples[i][0] for i in chosen], [samples[i][1] for i in chosen], answers=[ANSWER_TEXT] * 6)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("serving") / "answering")


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic clip (mp4 with speech, wav, png) plus a corrupt file, in the allowed media folder."""
    from affect_llm.data.synth import generate_synthetic_set

    root = tmp_path_factory.mktemp("clips")
    generate_synthetic_set(root / "synth", seed=0, num_train=1, num_val=0, num_test_per_cue=0, workers=1)
    row = json.loads((root / "synth" / "manifest.jsonl").read_text().splitlines()[0])
    media = root / "media"
    media.mkdir()
    for field, name in (("video", "clip.mp4"), ("audio", "clip.wav"), ("image", "clip.png")):
        shutil.copy(root / "synth" / row[field], media / name)
    (media / "transcript.txt").write_text(row["transcript"])
    # A WAV header followed by garbage: sniffed as audio, refused by the decoder.
    (media / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8)
    return media


@pytest.fixture(scope="session")
def server(answering_checkpoint: Path, clip_dir: Path):
    """The server on the answering checkpoint: no speech recognition, small limits, clips folder allowed.

    One token a step (``--draft-tokens 0``): the tests of clients that leave need a generation that
    lasts, and a tiny random model repeats itself, so verified drafts held nearly always and its
    3000 tokens decoded before a client's 2 s timeout (``tests/serving/test_scheduler.py`` decodes
    through drafts)."""
    with ServerProcess(answering_checkpoint, "--no-asr", "--allowed-media-dir", str(clip_dir),
                       "--max-request-mb", "4", "--max-media-mb", "2", "--max-tokens-limit", "4096",
                       "--served-model-name", "affect-tiny", "--draft-tokens", "0") as process:
        yield process
