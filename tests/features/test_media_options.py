"""Clips are read at inference as the checkpoint's training read them."""

from __future__ import annotations

from affect_llm.features.decode import MediaOptions


def test_options_follow_the_recorded_training_data_settings() -> None:
    meta = {"config": {"data": {"num_frames": 8, "detect_faces": False}}}
    assert MediaOptions.of_checkpoint(meta) == MediaOptions(num_frames=8, detect_faces=False)
    assert MediaOptions.of_checkpoint(meta, num_frames=2, decode_workers=3) == MediaOptions(2, False, 3)
    assert MediaOptions.of_checkpoint({}) == MediaOptions()  # a checkpoint that records none
