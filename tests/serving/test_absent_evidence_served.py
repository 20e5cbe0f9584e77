"""A served task answer writes null as the evidence of a channel the request does not carry."""

from __future__ import annotations

import json
from pathlib import Path

from openai import OpenAI
from servinghelpers import ANSWER, ANSWER_TEXT, ServerProcess, audio_part, image_part

MODEL = "affect-tiny"


def test_a_missing_face_is_null_in_the_served_answer(answering_checkpoint: Path, clip_dir: Path) -> None:
    with ServerProcess(answering_checkpoint, "--no-asr", "--served-model-name", MODEL,
                       null_absent_evidence=True) as server:
        client = OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)
        # Voice and face, no words: the fixed answer has null words already, so it is left whole.
        both = client.chat.completions.create(model=MODEL, max_tokens=120, messages=[
            {"role": "user", "content": [audio_part(clip_dir / "clip.wav"), image_part(clip_dir / "clip.png")]}])
        assert both.choices[0].message.content == ANSWER_TEXT
        # Voice only: the checkpoint would describe a face ("the face smiles"); the face is null.
        voice = client.chat.completions.create(model=MODEL, max_tokens=120, messages=[
            {"role": "user", "content": [audio_part(clip_dir / "clip.wav")]}])
        content = voice.choices[0].message.content
        audio = json.dumps(ANSWER["evidence"]["audio"])
        assert content.startswith('{"evidence": {"audio": ' + audio + ', "video": null'), content
        # A question about the clip, and a follow-up after the answer, keep the rule.
        question = [audio_part(clip_dir / "clip.wav"), {"type": "text", "text": "How does the person feel?"}]
        asked = client.chat.completions.create(model=MODEL, max_tokens=120,
                                               messages=[{"role": "user", "content": question}])
        content = asked.choices[0].message.content
        assert content.startswith('{"evidence": {"audio": ' + audio + ', "video": null'), content
        follow_up = client.chat.completions.create(model=MODEL, max_tokens=120, messages=[
            {"role": "user", "content": question}, {"role": "assistant", "content": content},
            {"role": "user", "content": "And why?"}])
        # What the tiny model answers after a history is anything; what counts is that the turn is told so.
        assert follow_up.model_dump()["affect"]["absent_channels"] == ["video", "text"]
        assert asked.model_dump()["affect"]["absent_channels"] == ["video", "text"]


def test_each_backend_decodes_with_the_rules_it_can_hold() -> None:
    from affect_llm.serving.completions import decoding_settings
    from affect_llm.serving.options import ServeOptions
    from affect_llm.serving.schema import ChatCompletionRequest

    chat = ChatCompletionRequest(model=MODEL, messages=[{"role": "user", "content": "How does this clip feel?"}])
    hf = decoding_settings(chat, ServeOptions(checkpoint="ckpt", backend="hf"))
    assert hf.null_absent_evidence and hf.guard_absent_explanation
    # A ServeOptions built in Python, not through the CLI: vLLM's engine still holds the evidence rule only.
    vllm = decoding_settings(chat, ServeOptions(checkpoint="ckpt", backend="vllm"))
    assert vllm.null_absent_evidence and not vllm.guard_absent_explanation
    unaided = decoding_settings(chat, ServeOptions(checkpoint="ckpt", backend="hf", guard_absent_explanation=False))
    assert not unaided.guard_absent_explanation
    assert hf.draft_tokens == 8  # --draft-tokens reaches each greedy request
    assert decoding_settings(chat, ServeOptions(checkpoint="ckpt", draft_tokens=0)).draft_tokens == 0
