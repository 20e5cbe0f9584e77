"""The evidence of a channel the clip lacks is decoded as ``null``, whatever the model prefers.

A scripted "model" stands in for the LLM's preferences (a random tiny LLM never writes JSON): at
each step it proposes the next token of the first of its answers that the text so far begins,
exactly as greedy decoding follows the highest score. The guard and the logits processor are the
real ones, on the tiny model's real tokenizer.
"""

from __future__ import annotations

import json

import pytest
import torch

from affect_llm.generation.absent_evidence import (
    AbsentChannelGuard,
    AbsentChannelLogitsProcessor,
    remaining_null,
)
from affect_llm.generation.backend import DecodingSettings
from affect_llm.generation.batch_stream import _Sampler
from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec
from affect_llm.processing.processor import absent_channels

INVENTED = {"evidence": {"audio": "The voice is loud and sharp.", "video": "The face is neutral.",
                         "text": "The words express anger."},
            "explanation": "The loud voice suggests anger.", "labels": ["angry"]}
FAITHFUL = {"evidence": {"audio": None, "video": "The face is neutral.", "text": "The words express anger."},
            "explanation": "The voice is missing; the words suggest anger.", "labels": ["angry"]}


@pytest.fixture(scope="module")
def tokenizer():
    _, processor = build_model(ModelSpec(), seed=0)
    return processor.tokenizer


def scripted_scores(tokenizer, answers: list[str], generated: list[int]) -> torch.Tensor:
    """Scores preferring the next token of the first answer the generated text begins."""
    text = tokenizer.decode(generated, skip_special_tokens=True)
    scores = torch.zeros(len(tokenizer))
    for answer in answers:
        if answer.startswith(text) and len(answer) > len(text):
            # The answer's own tokenization of what is left: its first token is the preferred one.
            scores[tokenizer(answer[len(text):], add_special_tokens=False)["input_ids"][0]] = 10.0
            return scores
    scores[tokenizer.eos_token_id] = 10.0
    return scores


def decode_greedy(tokenizer, processor: AbsentChannelLogitsProcessor, prompt: list[int], answers: list[str]) -> str:
    ids = list(prompt)
    for _ in range(200):
        generated = ids[len(prompt):]
        scores = scripted_scores(tokenizer, answers, generated)[None]
        scores = processor(torch.tensor([ids]), scores)
        token = int(scores[0].argmax())
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
    return tokenizer.decode(ids[len(prompt):], skip_special_tokens=True)


def test_a_missing_voice_is_decoded_null_and_the_answer_goes_on(tokenizer) -> None:
    answers = [json.dumps(INVENTED), json.dumps(FAITHFUL)]
    prompt = tokenizer("a prompt of some tokens", add_special_tokens=False)["input_ids"]
    guard = AbsentChannelGuard(tokenizer, absent=("audio",))
    text = decode_greedy(tokenizer, AbsentChannelLogitsProcessor([guard]), prompt, answers)
    assert json.loads(text) == FAITHFUL


def test_present_channels_are_left_to_the_model(tokenizer) -> None:
    answers = [json.dumps(INVENTED), json.dumps(FAITHFUL)]
    prompt = tokenizer("a prompt", add_special_tokens=False)["input_ids"]
    for guard in (None, AbsentChannelGuard(tokenizer, absent=())):
        text = decode_greedy(tokenizer, AbsentChannelLogitsProcessor([guard]), prompt, answers)
        assert json.loads(text) == INVENTED
    # A guard for a channel the answer describes only after `"evidence"` closes changes nothing.
    later = {"labels": ["angry"], "audio": "loud"}
    text = decode_greedy(tokenizer, AbsentChannelLogitsProcessor([AbsentChannelGuard(tokenizer, ("audio",))]),
                         prompt, [json.dumps(later)])
    assert json.loads(text) == later


def test_every_missing_channel_of_a_clip_is_null(tokenizer) -> None:
    everything = {"evidence": {"audio": "loud", "video": "frowning", "text": "angry words"}, "labels": ["angry"]}
    nothing = {"evidence": {"audio": None, "video": None, "text": None}, "labels": ["angry"]}
    only_video = {"evidence": {"audio": None, "video": "frowning", "text": None}, "labels": ["angry"]}
    # What the scripted model writes after a forced null: the next key, with its own preference.
    answers = [json.dumps(everything), json.dumps({"evidence": {"audio": None, "video": "frowning",
                                                               "text": "angry words"}, "labels": ["angry"]}),
               json.dumps(only_video), json.dumps(nothing)]
    absent = absent_channels(["face"], has_words=False)
    assert absent == ("audio", "text")
    text = decode_greedy(tokenizer, AbsentChannelLogitsProcessor([AbsentChannelGuard(tokenizer, absent)]),
                         [1, 2, 3], answers)
    assert json.loads(text) == only_video


def test_the_batch_stream_sampler_applies_the_same_guard(tokenizer) -> None:
    answers = [json.dumps(INVENTED), json.dumps(FAITHFUL)]
    sampler = _Sampler(DecodingSettings(), AbsentChannelGuard(tokenizer, ("audio",)))
    for _ in range(200):
        token = sampler(scripted_scores(tokenizer, answers, sampler.generated))
        if token == tokenizer.eos_token_id:
            break
    assert json.loads(tokenizer.decode(sampler.generated[:-1], skip_special_tokens=True)) == FAITHFUL
    free = _Sampler(DecodingSettings(null_absent_evidence=False),
                    AbsentChannelGuard(tokenizer, ("audio",), null_evidence=False))
    for _ in range(200):
        if free(scripted_scores(tokenizer, answers, free.generated)) == tokenizer.eos_token_id:
            break
    assert json.loads(tokenizer.decode(free.generated[:-1], skip_special_tokens=True)) == INVENTED


@pytest.mark.parametrize(("tail", "rest"), [("", '": null'), ('"', ": null"), ('":', " null"), ('": ', "null"),
                                             ('": nu', "ll"), ('"  :  n', "ull"), ('": null', ""), ('": "', "")])
def test_what_is_left_of_null(tail: str, rest: str) -> None:
    assert remaining_null(tail) == rest


def test_the_vllm_backend_holds_the_same_guard_by_continuing_departed_answers(tiny_checkpoint, monkeypatch) -> None:
    """vLLM takes no per-step hook; the backend cuts an answer where it left the guard and continues it.

    vLLM is not installed in CI (``scripts/check_vllm.py`` runs the real engine), so a scripted
    engine stands in for it: it recognises each request by its prompt embeddings, reads the answer
    prefix the backend appended back from the embedding table, and follows the scripted answers
    greedily. The backend, its prompt embeddings and the guards are the real ones; the reference is
    the per-step hook HF decoding uses, on the same scripted preferences.
    """
    import affect_llm.generation.vllm_backend as vllm_backend
    from affect_llm.generation.backend import GenerationRequest
    from affect_llm.generation.load import load_backend

    everything = {"evidence": {"audio": "loud", "video": "frowning", "text": "angry words"}, "labels": ["angry"]}
    scripts = [
        [json.dumps(INVENTED), json.dumps(FAITHFUL)],
        [json.dumps(everything), json.dumps({"evidence": {"audio": None, "video": "frowning", "text": "angry words"},
                                             "labels": ["angry"]}),
         json.dumps({"evidence": {"audio": None, "video": "frowning", "text": None}, "labels": ["angry"]})],
        [json.dumps(INVENTED), json.dumps(FAITHFUL)],
    ]
    absent = [("audio",), ("audio", "text"), ()]
    state: dict = {"calls": 0}

    class ScriptedEngine:
        def __init__(self, llm_dir, options) -> None:
            self.prompts: list[torch.Tensor] | None = None

        def generate(self, embeds, sampling):
            state["calls"] += 1
            tokenizer, table = state["tokenizer"], state["table"]
            if self.prompts is None:
                self.prompts = [e.clone() for e in embeds]
            per_prompt = sampling if isinstance(sampling, list) else [sampling] * len(embeds)
            out = []
            for embed, options in zip(embeds, per_prompt, strict=True):
                index = next(i for i, p in enumerate(self.prompts) if torch.equal(embed[: len(p)], p))
                appended = embed[len(self.prompts[index]):]
                ids = (appended[:, None] == table[None]).all(-1).float().argmax(-1).tolist()
                new: list[int] = []
                while len(new) < options["max_tokens"]:
                    token = int(scripted_scores(tokenizer, scripts[index], ids + new).argmax())
                    new.append(token)
                    if token == tokenizer.eos_token_id:
                        break
                out.append(new)
            return out

    monkeypatch.setattr(vllm_backend, "InProcessEngine", ScriptedEngine)
    monkeypatch.delenv("AFFECT_LLM_VLLM_PYTHON", raising=False)
    backend = load_backend("vllm", str(tiny_checkpoint))
    tokenizer = backend.processor.tokenizer
    state.update(tokenizer=tokenizer, table=backend.model.get_input_embeddings().weight.detach().float())
    # Words that differ per request, so that the engine can tell the three prompts apart.
    requests = [GenerationRequest(backend.processor.build_messages("reason", [], transcript=f"clip {i}"), absent=a)
                for i, a in enumerate(absent)]

    texts = backend.generate(requests, DecodingSettings(max_new_tokens=200))
    assert state["calls"] > 1  # the first two answers departed and were continued
    for text, script, channels in zip(texts, scripts, absent, strict=True):
        guard = AbsentChannelGuard(tokenizer, channels) if channels else None
        assert text == decode_greedy(tokenizer, AbsentChannelLogitsProcessor([guard]), [1, 2, 3], script)
    assert json.loads(texts[0]) == FAITHFUL and json.loads(texts[2]) == INVENTED
    assert json.loads(texts[1])["evidence"] == {"audio": None, "video": "frowning", "text": None}

    state["calls"] = 0
    free = backend.generate(requests, DecodingSettings(max_new_tokens=200, null_absent_evidence=False))
    assert state["calls"] == 1 and json.loads(free[0]) == INVENTED
