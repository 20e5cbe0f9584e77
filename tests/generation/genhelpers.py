"""Manifest and output helpers of the generation tests."""

from __future__ import annotations

import json
from pathlib import Path

from affect_llm.loading.spec import ModelSpec

# The tiny random model of the generation tests (a 2-layer LLM, tiny encoders).
TINY_SPEC = ModelSpec(llm="tiny:llm", audio_encoder="tiny:whisper", face_encoder="tiny:fer", audio_window_seconds=4.0,
                      num_audio_tokens=4, num_face_tokens=2)


def write_rows(rows: list[dict], path: Path) -> Path:
    """Write manifest rows (dicts) as JSONL; media paths should be absolute."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def noise_requests(processor, count: int = 3) -> list:
    """``count`` reason requests on noise clips of 0.5 s, 1 s, ... with questions of growing length."""
    import numpy as np

    from affect_llm.generation.backend import GenerationRequest

    rng = np.random.default_rng(0)
    requests = []
    for i in range(count):
        media = processor.prepare_media(audio=(0.1 * rng.standard_normal(8_000 * (i + 1))).astype(np.float32))
        requests.append(GenerationRequest(processor.build_messages("reason", media.modalities, question="q" * (i + 1)),
                                          media))
    return requests
