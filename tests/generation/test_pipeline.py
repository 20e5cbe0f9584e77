"""``AffectPipeline``: parsed answers, honest parse failures, streaming, history and reset."""

from __future__ import annotations

import json

import pytest
import torch

from affect_llm.generation.backend import DecodingSettings
from affect_llm.generation.pipeline import AffectPipeline


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return AffectPipeline(tiny_checkpoint, DecodingSettings(max_new_tokens=12))


@pytest.fixture
def clip(synth_rows):
    row = synth_rows[0]
    return {"audio": row["audio"], "image": row["image"], "transcript": row["transcript"]}


def test_random_model_answer_is_unparseable_not_coerced(pipe, clip):
    result = pipe(**clip)
    assert result["parse_status"] == "unparseable"
    assert result["labels"] is None and result["explanation"] is None and result["evidence"] is None
    assert result["error"]
    assert isinstance(result["raw"], str) and result["raw"]
    assert pipe.messages[-1] == {"role": "assistant", "content": result["raw"]}


def test_structured_answer_is_parsed(pipe, clip, monkeypatch):
    answer = {
        "labels": ["Happy", "excited "],
        "explanation": "The voice rises.",
        "evidence": {"audio": "high pitch", "video": None, "text": "positive words"},
    }
    text = "Sure: " + json.dumps(answer)

    def fake_stream(request, settings):
        yield from (text[i : i + 5] for i in range(0, len(text), 5))

    monkeypatch.setattr(pipe.backend, "stream", fake_stream)
    result = pipe(**clip)
    assert result["parse_status"] == "ok" and result["error"] is None
    assert result["labels"] == ["happy", "excited"]
    assert result["explanation"] == "The voice rises."
    assert result["evidence"] == {"audio": "high pitch", "video": None, "text": "positive words"}
    assert result["raw"] == text


def test_streamed_reply_equals_batched_generation(pipe, clip):
    modalities = pipe.attach(**clip)
    assert modalities == ["audio", "face"]
    request = pipe._request(None, "reason")
    batched = pipe.backend.generate([request], pipe.decoding)[0]
    assert pipe.ask() == batched


def test_follow_up_keeps_history_and_attach_resets_it(pipe, clip):
    pipe.attach(**clip)
    pipe.ask()
    first_turn = list(pipe.messages)
    pipe.ask("Why?")
    assert pipe.messages[: len(first_turn)] == first_turn
    assert pipe.messages[len(first_turn)] == {"role": "user", "content": "Why?"}
    assert len(pipe.messages) == len(first_turn) + 2
    pipe.attach(audio=clip["audio"])
    assert pipe.messages == [] and pipe.media.modalities == ("audio",) and pipe.media.audio.is_features


def test_undecodable_clip_names_the_file_and_keeps_the_clip_before(pipe, clip, tmp_path):
    """A refused /attach in a chat must not leave the conversation without the clip it was about."""
    pipe.attach(**clip)
    pipe.ask()
    history = list(pipe.messages)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    with pytest.raises(ValueError, match="broken.png"):
        pipe.attach(image=str(broken))
    assert pipe.media.modalities == ("audio", "face") and pipe.messages == history
    assert pipe.transcript == clip["transcript"]


def test_precision_may_be_named_by_its_dtype(tiny_checkpoint):
    half = AffectPipeline(tiny_checkpoint, DecodingSettings(max_new_tokens=4), precision="bfloat16")
    assert next(half.backend.model.language_model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='float8'"):
        AffectPipeline(tiny_checkpoint, precision="float8")


def test_chat_refuses_what_the_checks_refuse_and_notes_their_warnings(pipe, synth_rows, tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(str(tmp_path / "nan.wav"), np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan.wav: field 'audio': 16000 NaN/inf samples"):
        pipe.attach(audio=str(tmp_path / "nan.wav"))
    # 8 kHz speech is used, with the note every command records.
    voice, rate = sf.read(synth_rows[0]["audio"])
    sf.write(str(tmp_path / "phone.wav"), voice[::2], rate // 2)
    result = pipe(audio=str(tmp_path / "phone.wav"))
    assert result["parse_status"] in ("ok", "unparseable")
    assert [w["code"] for w in result["warnings"]] == ["low_sample_rate"] == [w["code"] for w in pipe.warnings]


def test_a_failure_inside_generation_is_raised_not_waited_for(pipe, clip, monkeypatch):
    """Generation streams from a thread; its error must reach the caller. There is no GPU here to run
    out of memory, so the failure is injected into the model's merging of the media into the prompt."""
    pipe.attach(**clip)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(pipe.backend.model, "embed_inputs", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        pipe.ask("How does the speaker feel?")
    assert pipe.messages == []  # nothing half-answered joins the history


def test_closing_a_stream_stops_generation(tiny_checkpoint, clip):
    import threading

    pipe = AffectPipeline(tiny_checkpoint, DecodingSettings(max_new_tokens=2000))
    pipe.attach(**clip)
    pieces = pipe.stream("How does the speaker feel?")
    next(pieces)
    pieces.close()  # what Ctrl-C in the chat does to the stream
    assert "affect-llm-generate" not in [t.name for t in threading.enumerate()]
    assert pipe.messages == []


def test_blank_words_and_empty_paths_are_no_channel(pipe, clip):
    assert pipe.attach(audio=clip["audio"], image="", transcript="   ") == ["audio"]
    assert pipe.transcript is None
    assert "text" in pipe._request("How?", "reason").absent


def test_a_call_with_nothing_to_reason_about_is_refused(pipe, clip):
    """No medium and no words: the prompt would say the clip has nothing and the model answer anyway."""
    pipe.attach(audio=clip["audio"])
    for nothing in ({}, {"video": "", "transcript": "  "}):
        with pytest.raises(ValueError, match="nothing to reason about"):
            pipe(**nothing)
    assert pipe.media.modalities == ("audio",)  # the clip attached before stays


def test_a_conversation_past_the_context_is_refused_and_kept(pipe, clip):
    from affect_llm.generation.pipeline import ContextLengthError

    pipe.attach(audio=clip["audio"], transcript=" ".join(["okay"] * 9000))
    with pytest.raises(ContextLengthError, match="context is 8192 tokens"):
        pipe.stream("How does the speaker feel?")
    assert pipe.messages == []


def test_decoding_settings_refuse_an_empty_budget():
    with pytest.raises(ValueError, match="max_new_tokens"):
        DecodingSettings(max_new_tokens=0)


@pytest.mark.parametrize(("field", "value"), [("temperature", 0.0), ("temperature", -1.0), ("top_p", 0.0),
                                              ("top_p", 1.5)])
def test_decoding_settings_refuse_sampling_parameters_that_mean_nothing(field, value):
    with pytest.raises(ValueError, match=f"DecodingSettings.{field} must be above 0"):
        DecodingSettings(**{field: value})
