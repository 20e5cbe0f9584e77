"""``stream_batch``: each request's tokens as they come, the same greedy text as ``generate``, rows that leave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genhelpers import TINY_SPEC
from torch._dynamo.utils import counters

from affect_llm.generation.backend import DecodingSettings, GenerationRequest
from affect_llm.generation.batch_stream import (
    BatchItem,
    IncrementalDetokenizer,
    cache_argument,
    shared_prefix_length,
    stream_batch,
)
from affect_llm.generation.compiled_step import CompiledDecoder
from affect_llm.generation.hf_backend import HFBackend
from affect_llm.generation.kv_cache import GrowingLayer
from affect_llm.generation.ngram_drafts import NgramDrafter
from affect_llm.generation.prefix_cache import PrefixCache
from affect_llm.loading.build import build_model


class Sink:
    """Collects tokens; cancels itself after ``cancel_after`` tokens when set."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.cancel_after = cancel_after

    def put(self, token_id: int) -> None:
        self.tokens.append(token_id)

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.tokens) >= self.cancel_after

    def end(self, reason: str) -> None:
        self.reason = reason


@pytest.fixture(scope="module")
def parts():
    model, processor = build_model(TINY_SPEC, seed=0)
    rng = np.random.default_rng(0)
    requests = []
    for i in range(4):  # different prompt lengths and media: left padding matters
        audio = (0.1 * rng.standard_normal(8_000 * (i + 1))).astype(np.float32)
        face = rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8) if i % 2 else None
        media = processor.prepare_media(audio=audio, face=face)
        requests.append(GenerationRequest(processor.build_messages("reason", media.modalities, question="q" * (3 * i + 1)),
                                          media))
    return model.eval(), processor, requests


def run(parts, settings: list[DecodingSettings], sinks: list[Sink], indices: list[int] | None = None,
        drafter: NgramDrafter | None = None, decoder: CompiledDecoder | None = None,
        prefixes: PrefixCache | None = None):
    model, processor, requests = parts
    chosen = [requests[i] for i in indices] if indices is not None else requests
    return stream_batch(model, processor, [BatchItem(r, s, k) for r, s, k in zip(chosen, settings, sinks, strict=True)],
                        drafter=drafter, decoder=decoder, prefixes=prefixes)


def generate_reference(model, processor, requests, max_new_tokens: int) -> list[str]:
    """Greedy answers of transformers' own ``generate`` (left-padded batch, dynamic cache)."""
    items = [{**processor.encode_text(r.messages), "media": r.media} for r in requests]
    tokenizer = processor.tokenizer
    output = model.generate(**processor.collate(items, padding_side="left"), max_new_tokens=max_new_tokens,
                            do_sample=False, temperature=None, top_p=None, top_k=None,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def test_greedy_tokens_are_those_of_generate(parts) -> None:
    model, processor, requests = parts
    settings = DecodingSettings(max_new_tokens=12)
    expected = generate_reference(model, processor, requests, 12)
    sinks = [Sink() for _ in requests]
    run(parts, [settings] * 4, sinks)
    assert [processor.tokenizer.decode(s.tokens, skip_special_tokens=True) for s in sinks] == expected
    assert HFBackend(model, processor).generate(requests, settings) == expected  # the backend's batches


def test_greedy_tokens_survive_the_cache_growing_mid_answer(parts, monkeypatch) -> None:
    """Room for two positions past the prompt: the cache reallocates several times while decoding."""
    model, processor, requests = parts
    monkeypatch.setattr(GrowingLayer, "reserve", 2)
    expected = generate_reference(model, processor, requests, 12)
    sinks = [Sink() for _ in requests]
    run(parts, [DecodingSettings(max_new_tokens=n) for n in (3, 12, 7, 12)], sinks)  # rows leave as well
    decoded = [processor.tokenizer.decode(s.tokens, skip_special_tokens=True) for s in sinks]
    assert decoded[1] == expected[1] and decoded[3] == expected[3]
    assert all(expected[i].startswith(decoded[i]) for i in (0, 2))


def test_the_shared_prompt_prefix_stops_before_the_media(parts) -> None:
    _, processor, requests = parts
    prompts = [processor.encode_text(r.messages)["input_ids"] for r in requests]
    media_ids = set(processor.token_ids().values())
    shared = shared_prefix_length(prompts, media_ids)
    assert shared >= 8 and prompts[0][shared] in media_ids  # the system prompt, computed once per batch
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]], set()) == 0  # too short to be worth a pass


def test_rows_with_smaller_budgets_leave_the_batch(parts) -> None:
    sinks = [Sink() for _ in range(4)]
    budgets = [2, 12, 5, 12]
    stats = run(parts, [DecodingSettings(max_new_tokens=n) for n in budgets], sinks)
    assert [len(s.tokens) for s in sinks] == budgets and [s.reason for s in sinks] == ["length"] * 4
    assert stats.steps == 11 and stats.row_steps == sum(budgets) - 4  # each step computes only live rows


def test_a_cancelled_row_stops_and_the_others_are_unchanged(parts) -> None:
    settings = [DecodingSettings(max_new_tokens=12)] * 4
    alone = [Sink() for _ in range(4)]
    run(parts, settings, alone)
    sinks = [Sink(), Sink(cancel_after=3), Sink(), Sink()]
    stats = run(parts, settings, sinks)
    assert sinks[1].reason == "cancelled" and len(sinks[1].tokens) == 3
    assert [s.tokens for i, s in enumerate(sinks) if i != 1] == [s.tokens for i, s in enumerate(alone) if i != 1]
    assert stats.row_steps == 3 * 11 + 3


def test_sampling_is_seeded_per_request_whatever_its_batch(parts) -> None:
    sampled = DecodingSettings(max_new_tokens=10, do_sample=True, temperature=1.0, top_p=0.9, seed=7)
    alone = Sink()
    run(parts, [sampled], [alone], indices=[2])
    companions = [Sink(), Sink(), Sink()]
    run(parts, [DecodingSettings(max_new_tokens=10), sampled, DecodingSettings(max_new_tokens=3)], companions,
        indices=[0, 2, 3])
    assert companions[1].tokens == alone.tokens


def test_detokenized_pieces_never_split_a_character(parts) -> None:
    tokenizer = parts[1].tokenizer
    text = "happy ☺ — naïve 情"
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    pieces.append(detokenizer.flush())
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def _compare_compiled(parts, decoder: CompiledDecoder, indices: list[int]) -> None:
    """One batch through the eager loop and through ``decoder``: the same tokens and finish reasons."""
    model, processor, requests = parts
    settings = [DecodingSettings(max_new_tokens=3), DecodingSettings(max_new_tokens=9),
                DecodingSettings(max_new_tokens=6, do_sample=True, seed=5), DecodingSettings(max_new_tokens=9)]
    settings = settings[:len(indices)]
    eager = [Sink(cancel_after=4 if i == 3 else None) for i in range(len(indices))]
    compiled = [Sink(cancel_after=4 if i == 3 else None) for i in range(len(indices))]
    run(parts, settings, eager, indices)
    chosen = [requests[i] for i in indices]
    stats = stream_batch(model, processor, [BatchItem(r, s, k) for r, s, k in zip(chosen, settings, compiled,
                                                                                 strict=True)], decoder=decoder)
    assert [s.tokens for s in compiled] == [s.tokens for s in eager]
    assert [s.reason for s in compiled] == [s.reason for s in eager]
    assert stats.steps == max(len(s.tokens) for s in compiled) - 1  # rows stay in a static batch to the last end


def test_compiled_decoding_gives_each_row_the_eager_tokens(parts) -> None:
    """Rows with their own budgets, one cancelled, one sampling: with the compiled step over a static cache
    every row gets the eager loop's tokens and finish reason. The first batch compiles a static graph;
    the second's shorter prompts fit a shorter cache and compile once more with the length symbolic, a
    graph that serves the first shape again; a batch of fewer rows compiles a third, rows symbolic too."""
    torch._dynamo.reset()  # no graph of an earlier test serves these shapes
    model, _, _ = parts
    decoder = CompiledDecoder(model.language_model, cache_argument(model.language_model), length_step=64)
    graphs = counters["stats"]["unique_graphs"]
    for indices in ([0, 1, 2, 3], [1, 0, 1, 0], [0, 1, 2, 3], [2, 3]):  # the second batch's prompts are shorter
        _compare_compiled(parts, decoder, indices)
    assert counters["stats"]["unique_graphs"] - graphs == 3  # static; length symbolic; rows too
    assert not decoder._eager


def test_compiled_ahead_as_a_server_does_every_later_batch_finds_its_graph(parts) -> None:
    """``HFBackend.compile_ahead`` (``serve --compile``) compiles with symbolic sizes, one row and then
    two, and one row verifying a draft; later batches of other row counts and prompt lengths, and one
    answer verifying drafts of several lengths, get the eager tokens from those three graphs."""
    torch._dynamo.reset()  # no graph of an earlier test serves these shapes
    model, processor = build_model(TINY_SPEC, seed=0)
    backend = HFBackend(model.eval(), processor)
    graphs = counters["stats"]["unique_graphs"]
    assert backend.compile_ahead(draft_tokens=8)
    assert counters["stats"]["unique_graphs"] - graphs == 3
    own = (backend.model, processor, parts[2])
    for indices in ([1, 2, 3], [3], [2, 0, 3, 1], [0]):
        _compare_compiled(own, backend._decoder, indices)
    request = parts[2][2]
    plain = Sink()
    backend.decode([BatchItem(request, DecodingSettings(max_new_tokens=24, draft_tokens=0), plain)])
    backend.drafter.remember(plain.tokens[:7] + plain.tokens[10:])  # drafts that hold, break, then hold again
    drafted = Sink()
    stats = backend.decode([BatchItem(request, DecodingSettings(max_new_tokens=24, compile=True), drafted)],
                           compile=True)
    assert drafted.tokens == plain.tokens and stats.steps < len(plain.tokens) // 2
    assert counters["stats"]["unique_graphs"] - graphs == 3 and not backend._decoder._eager


def test_where_dynamo_refuses_to_compile_again_the_step_runs_eagerly(parts) -> None:
    """Past dynamo's recompile limit (it counts every graph of the LLM's forward in the process) a
    batch is not lost: the same tokens, eagerly, from the refused step on."""
    torch._dynamo.reset()  # dynamo's cache empty: its limit counts this test's graphs only
    model, processor = build_model(TINY_SPEC, seed=0)
    own = (model.eval(), processor, parts[2])
    decoder = CompiledDecoder(model.language_model, cache_argument(model.language_model), length_step=8)
    with torch._dynamo.config.patch(recompile_limit=1):  # at most one graph of the LLM's forward here
        for indices in ([0, 1, 2, 3], [1, 0, 1, 0]):
            _compare_compiled(own, decoder, indices)
    assert decoder._eager


def test_verified_drafts_give_each_answer_its_one_token_a_step_tokens_in_fewer_steps(parts) -> None:
    model, processor, requests = parts
    settings = DecodingSettings(max_new_tokens=24)
    for index in range(len(requests)):
        plain = Sink()
        plain_stats = run(parts, [DecodingSettings(max_new_tokens=24, draft_tokens=0)], [plain], [index],
                          drafter=NgramDrafter())
        assert plain_stats.steps == len(plain.tokens) - 1  # one token a step: no drafts asked for
        knowing = NgramDrafter()
        knowing.remember(plain.tokens)  # an earlier answer that is this one: every draft holds
        drafted = Sink()
        stats = run(parts, [settings], [drafted], [index], drafter=knowing)
        assert drafted.tokens == plain.tokens and drafted.reason == plain.reason == "length"
        assert stats.steps <= len(plain.tokens) // 4, stats  # up to 9 tokens a step
        # Drafts that are always wrong: every step cuts its rejected positions from the cache.
        wrong = NgramDrafter()
        wrong.remember([(token + 1) % len(processor.tokenizer) for token in plain.tokens])
        wrong_sink = Sink()
        run(parts, [settings], [wrong_sink], [index], drafter=wrong)
        assert wrong_sink.tokens == plain.tokens
    # A budget or a cancel inside an accepted draft ends the answer at that token.
    short, cancelled = Sink(), Sink(cancel_after=3)
    run(parts, [DecodingSettings(max_new_tokens=5)], [short], [0], drafter=knowing)
    run(parts, [settings], [cancelled], [0], drafter=knowing)
    full = Sink()
    run(parts, [settings], [full], [0])
    assert short.tokens == full.tokens[:5] and short.reason == "length"
    assert cancelled.tokens == full.tokens[:3] and cancelled.reason == "cancelled"


def test_drafts_verified_by_the_compiled_step_give_the_eager_tokens_in_fewer_steps(parts) -> None:
    """``explain --compile --batch-size 1`` and a compiled chat: drafts verified through the compiled step
    over its static cache. Rejected drafts are cut from the static cache (its length moved back), every
    answer keeps the eager loop's tokens, and the step's two graphs (one token; a token and its draft,
    their count symbolic) serve drafts of every length."""
    torch._dynamo.reset()
    model, processor, _ = parts
    decoder = CompiledDecoder(model.language_model, cache_argument(model.language_model), length_step=8)
    settings = DecodingSettings(max_new_tokens=24)
    answers = []
    prefixes = PrefixCache()  # as the hf backend decodes: later answers load the prompt prefix
    for index in (0, 3):  # prompts of two lengths: the second compiles with symbolic sizes
        plain = Sink()
        run(parts, [DecodingSettings(max_new_tokens=24, draft_tokens=0)], [plain], [index])
        answers.append(plain.tokens)
        knowing = NgramDrafter()
        knowing.remember(plain.tokens[:9] + plain.tokens[12:])  # drafts that hold, then break at the 10th token
        drafted = Sink()
        stats = run(parts, [settings], [drafted], [index], drafter=knowing, decoder=decoder, prefixes=prefixes)
        assert drafted.tokens == plain.tokens and drafted.reason == "length"
        assert stats.steps < len(plain.tokens) // 2, stats
        wrong = NgramDrafter()
        wrong.remember([(token + 1) % len(processor.tokenizer) for token in plain.tokens])
        wrong_sink = Sink()
        run(parts, [settings], [wrong_sink], [index], drafter=wrong, decoder=decoder, prefixes=prefixes)
        assert wrong_sink.tokens == plain.tokens
    assert prefixes.reused_tokens > 0
    short = Sink()
    run(parts, [DecodingSettings(max_new_tokens=5)], [short], [0], drafter=knowing, decoder=decoder)
    assert short.tokens == answers[0][:5] and short.reason == "length"
    assert not decoder._eager


def test_drafts_are_not_used_where_they_cannot_be_verified(parts) -> None:
    """Sampling and batches of several rows decode one token a step; so does a row without a drafter."""
    knowing = NgramDrafter()
    knowing.remember(list(range(100)))
    sampled = DecodingSettings(max_new_tokens=10, do_sample=True, seed=3)
    with_drafter, without = Sink(), Sink()
    stats = run(parts, [sampled], [with_drafter], [1], drafter=knowing)
    run(parts, [sampled], [without], [1])
    assert with_drafter.tokens == without.tokens and stats.steps == 9
    stats = run(parts, [DecodingSettings(max_new_tokens=10)] * 2, [Sink(), Sink()], [0, 1], drafter=knowing)
    assert stats.steps == 9


def test_the_drafter_proposes_what_followed_the_longest_known_ending() -> None:
    drafter = NgramDrafter(max_ngram=3, memory_tokens=12)
    drafter.remember([1, 2, 3, 4, 5, 6])
    assert drafter.propose([9, 2, 3], 3) == [4, 5, 6]
    assert drafter.propose([7, 8, 7], 2) == [8, 7]  # the answer itself first: 7 was followed by 8
    assert drafter.propose([42], 3) == [] and drafter.propose([], 3) == []
    drafter.remember([10, 11, 12, 13, 14, 15, 16, 17])  # past the memory: the older half is forgotten
    assert drafter.propose([2, 3], 2) == [] and drafter.propose([12], 2) == [13, 14]
