"""``PrefixCache``: a batch of one loads the shared prompt prefix an earlier batch computed, with the same answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genhelpers import TINY_SPEC

from affect_llm.generation.backend import DecodingSettings, GenerationRequest
from affect_llm.generation.batch_stream import (
    BatchItem,
    TokenCollector,
    cache_argument,
    shared_prefix_length,
    stream_batch,
)
from affect_llm.generation.hf_backend import HFBackend
from affect_llm.generation.kv_cache import GrowingCache
from affect_llm.generation.prefix_cache import PrefixCache
from affect_llm.loading.build import build_model

SETTINGS = DecodingSettings(max_new_tokens=10, draft_tokens=0)


@pytest.fixture(scope="module")
def parts():
    model, processor = build_model(TINY_SPEC, seed=0)
    rng = np.random.default_rng(1)
    clips = []
    for i in range(3):  # clips with media: the prefix ends before the first media placeholder
        audio = (0.1 * rng.standard_normal(8_000 * (i + 1))).astype(np.float32)
        media = processor.prepare_media(audio=audio)
        clips.append(GenerationRequest(processor.build_messages("reason", media.modalities, question="w" * (i + 1)),
                                       media))
    # Text only, as a chat's turns: the prefix is the whole prompt but its last token, and two questions
    # share only its first part.
    texts = [GenerationRequest(processor.build_messages("reason", (), None, question), absent=("audio", "video"))
             for question in ("How does the speaker feel?", "How does the speaker feel about the weather?")]
    return model.eval(), processor, clips, texts


class ThroughTheLLM:
    """Records the positions each forward of the LLM computes (at its first layer) and the logits it returns."""

    def __init__(self, model) -> None:
        self.lengths: list[int] = []
        self.logits: list[torch.Tensor] = []
        lm = model.language_model
        self.handles = [
            lm.model.layers[0].register_forward_hook(lambda _m, args, _o: self.lengths.append(args[0].shape[1])),
            lm.lm_head.register_forward_hook(lambda _m, _a, out: self.logits.append(out[:, -1].clone())),
        ]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def answer(parts, requests: list[GenerationRequest], prefixes: PrefixCache | None
           ) -> tuple[list[list[int]], ThroughTheLLM]:
    """Requests as one batch through ``stream_batch``: their greedy tokens, and what each forward computed."""
    model, processor = parts[0], parts[1]
    sinks, seen = [TokenCollector() for _ in requests], ThroughTheLLM(model)
    try:
        stream_batch(model, processor, [BatchItem(r, SETTINGS, k) for r, k in zip(requests, sinks, strict=True)],
                     prefixes=prefixes)
    finally:
        seen.close()
    return [sink.tokens for sink in sinks], seen


def assert_same_logits(loaded: ThroughTheLLM, alone: ThroughTheLLM, exact: bool) -> None:
    """The prompt's and every step's logits of a run that loaded its prefix against one that computed
    it (whose first forward, the prefix's own, has no counterpart)."""
    assert len(loaded.logits) == len(alone.logits) - 1
    for mine, theirs in zip(loaded.logits, alone.logits[1:], strict=True):
        if exact:
            assert torch.equal(mine, theirs)
        else:
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def prefix_of(processor, request: GenerationRequest) -> list[int]:
    ids = processor.encode_text(request.messages)["input_ids"]
    return ids[:shared_prefix_length([ids], set(processor.token_ids().values()))]


def test_a_later_clip_loads_the_prefix_and_answers_as_if_it_computed_it(parts) -> None:
    _, processor, clips, _ = parts
    prefixes = PrefixCache()
    shared = len(prefix_of(processor, clips[0]))
    assert shared >= 8 and prefix_of(processor, clips[1]) == prefix_of(processor, clips[0])
    _, first = answer(parts, clips[:1], prefixes)
    assert first.lengths[0] == shared and len(prefixes) == 1  # computed, then kept
    for clip in clips[1:]:
        alone, alone_seen = answer(parts, [clip], None)
        loaded, loaded_seen = answer(parts, [clip], prefixes)
        assert loaded == alone
        # The prefix's forward is skipped: the prompt's own tokens come first.
        assert alone_seen.lengths[0] == shared and loaded_seen.lengths == alone_seen.lengths[1:]
        assert_same_logits(loaded_seen, alone_seen, exact=True)  # the whole prefix loaded: bit for bit
    assert prefixes.reused_tokens == 2 * shared and len(prefixes) == 1
    # A batch of several clips repeats the loaded prefix for every row.
    alone, alone_seen = answer(parts, clips, None)
    loaded, loaded_seen = answer(parts, clips, prefixes)
    assert loaded == alone and loaded_seen.lengths == alone_seen.lengths[1:]
    assert_same_logits(loaded_seen, alone_seen, exact=True)
    assert prefixes.reused_tokens == 3 * shared


def test_loaded_keys_and_values_are_those_computed(parts) -> None:
    model, processor, clips, _ = parts
    prefix = prefix_of(processor, clips[0])
    lm = model.language_model
    computed = GrowingCache()
    with torch.no_grad():
        lm(input_ids=torch.tensor(prefix)[None], **{cache_argument(lm): computed}, use_cache=True)
    prefixes = PrefixCache()
    prefixes.store(prefix, computed)
    loaded = GrowingCache()
    assert prefixes.load(prefix, loaded) == len(prefix)
    for mine, theirs in zip(loaded.layers, computed.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    # A prefix that shares only its first tokens loads those; too few shared loads nothing.
    fewer = GrowingCache()
    assert prefixes.load([*prefix[:5], -1], fewer) == 5 and fewer.get_seq_length() == 5
    assert prefixes.load([*prefix[:5], -1], GrowingCache(), min_tokens=8) == 0
    with pytest.raises(ValueError, match="empty cache"):
        prefixes.load(prefix, loaded)


def test_a_prompt_sharing_part_of_a_kept_prefix_computes_only_the_rest(parts) -> None:
    """A chat's next question: the system prompt and the chat header load, the question is computed."""
    _, processor, _, texts = parts
    prefixes = PrefixCache()
    short, long = (prefix_of(processor, text) for text in texts)
    common = next(i for i, (a, b) in enumerate(zip(short, long, strict=False)) if a != b)
    assert common >= 8
    answer(parts, texts[:1], prefixes)
    alone, alone_seen = answer(parts, texts[1:], None)
    loaded, loaded_seen = answer(parts, texts[1:], prefixes)
    assert loaded == alone
    assert alone_seen.lengths[0] == len(long) and loaded_seen.lengths[0] == len(long) - common
    assert loaded_seen.lengths[1:] == alone_seen.lengths[1:]
    # The prefix's rest is computed with the loaded part in the cache: its last logits, and every
    # step's after, are those of the prefix computed whole (to float rounding: a part of a longer prefix).
    assert len(loaded_seen.logits) == len(alone_seen.logits)
    for mine, theirs in zip(loaded_seen.logits, alone_seen.logits, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    assert prefixes.reused_tokens == common and len(prefixes) == 2  # both kept: neither extends the other


def cache_of(length: int) -> GrowingCache:
    """A one-layer cache holding ``length`` positions of random keys and values."""
    cache = GrowingCache()
    cache.update(torch.randn(1, 2, length, 4), torch.randn(1, 2, length, 4), 0)
    return cache


def test_the_least_recently_used_prefix_goes_first_and_an_extended_one_is_replaced() -> None:
    prefixes = PrefixCache(entries=2)
    prefixes.store([1] * 10, cache_of(10))
    prefixes.store([2] * 10, cache_of(10))
    assert prefixes.load([1] * 12, GrowingCache()) == 10  # now the most recently used
    prefixes.store([3] * 10, cache_of(10))  # [2] * 10 goes
    assert len(prefixes) == 2 and prefixes.load([2] * 10, GrowingCache()) == 0
    prefixes.store([1] * 12, cache_of(12))  # extends [1] * 10, which it replaces
    assert len(prefixes) == 2 and prefixes.load([1] * 20, GrowingCache()) == 12
    prefixes.store([1] * 8, cache_of(8))  # held already by a longer one
    assert len(prefixes) == 2
    with pytest.raises(ValueError, match="holds 8 positions"):
        prefixes.store([4] * 9, cache_of(8))
    prefixes.clear()
    assert len(prefixes) == 0
    # A prefix computed before a clear (the weights' layout changed meanwhile) is not kept after it.
    generation = prefixes.generation
    prefixes.clear()
    prefixes.store([5] * 10, cache_of(10), generation)
    assert len(prefixes) == 0


def test_kept_positions_stay_within_their_budget() -> None:
    prefixes = PrefixCache(entries=4, max_tokens=25)
    prefixes.store([1] * 10, cache_of(10))
    prefixes.store([2] * 10, cache_of(10))
    prefixes.store([3] * 10, cache_of(10))  # 30 positions: the least recently used goes
    assert len(prefixes) == 2 and prefixes.load([1] * 10, GrowingCache()) == 0
    prefixes.store([4] * 30, cache_of(30))  # longer than the budget alone: not kept
    assert len(prefixes) == 2 and prefixes.load([4] * 30, GrowingCache()) == 0


def test_the_backend_reuses_prefixes_between_answers_and_forgets_them_when_it_compiles(parts) -> None:
    model, processor, clips, texts = parts
    # Unpacked layers throughout: several backends share the model, and packing is chosen by timing.
    fresh = [HFBackend(model, processor, pack_weights=False).generate([clip], SETTINGS)[0] for clip in clips]
    backend = HFBackend(model, processor, pack_weights=False)
    assert [backend.generate([clip], SETTINGS)[0] for clip in clips] == fresh
    assert backend.prefixes.reused_tokens == 2 * len(prefix_of(processor, clips[0]))
    streamed = "".join(backend.stream(texts[0], SETTINGS))  # a chat turn
    assert streamed == HFBackend(model, processor, pack_weights=False).generate([texts[0]], SETTINGS)[0]
    # The chat's prefix starts with the clips' (the system prompt and the user header) and replaced it,
    # and a clip loads its whole prefix from there.
    assert len(backend.prefixes) == 1
    reused = backend.prefixes.reused_tokens
    assert backend.generate([clips[0]], SETTINGS)[0] == fresh[0]
    assert backend.prefixes.reused_tokens == reused + len(prefix_of(processor, clips[0]))
    backend._decoder_for(True)  # the compiled step may lay the weights out anew: kept prefixes go
    assert len(backend.prefixes) == 0


def test_a_prefix_is_read_only_under_the_salt_it_was_kept_with() -> None:
    prefixes = PrefixCache()
    prefixes.store([1] * 10, cache_of(10), salt="client a")
    assert prefixes.load([1] * 10, GrowingCache(), salt="client b") == 0
    assert prefixes.load([1] * 10, GrowingCache()) == 0  # no salt is a salt of its own
    assert prefixes.load([1] * 12, GrowingCache(), salt="client a") == 10
    # The same tokens under another salt are kept beside it, and extending one replaces only its own.
    prefixes.store([1] * 10, cache_of(10), salt="client b")
    prefixes.store([1] * 12, cache_of(12), salt="client b")
    assert len(prefixes) == 2
    assert prefixes.load([1] * 12, GrowingCache(), salt="client a") == 10
    assert prefixes.load([1] * 12, GrowingCache(), salt="client b") == 12


class CachedCount(TokenCollector):
    """A sink that also records how many prompt tokens were loaded from kept prefixes."""

    def __init__(self) -> None:
        super().__init__()
        self.cached: list[int] = []

    def prompt_cached(self, tokens: int) -> None:
        self.cached.append(tokens)


def salted(request: GenerationRequest, salt: str | None) -> GenerationRequest:
    return GenerationRequest(request.messages, request.media, request.absent, cache_salt=salt)


def test_salted_batches_share_prefixes_and_drafts_only_within_their_salt(parts) -> None:
    model, processor, clips, _ = parts
    shared = len(prefix_of(processor, clips[0]))
    backend = HFBackend(model, processor, pack_weights=False)

    def run(requests: list[GenerationRequest]) -> tuple[list[list[int]], list[list[int]]]:
        sinks = [CachedCount() for _ in requests]
        backend.decode([BatchItem(r, SETTINGS, s) for r, s in zip(requests, sinks, strict=True)])
        return [s.tokens for s in sinks], [s.cached for s in sinks]

    fresh = [HFBackend(model, processor, pack_weights=False).generate([clip], SETTINGS)[0] for clip in clips[:2]]
    tokens, cached = run([salted(clips[0], "a")])
    assert cached == [[0]] and processor.tokenizer.decode(tokens[0], skip_special_tokens=True) == fresh[0]
    tokens, cached = run([salted(clips[1], "a")])
    assert cached == [[shared]] and processor.tokenizer.decode(tokens[0], skip_special_tokens=True) == fresh[1]
    assert run([salted(clips[1], "b")])[1] == [[0]] and run([clips[1]])[1] == [[0]]
    # A batch whose rows differ in salt neither reads nor keeps a prefix.
    kept = len(backend.prefixes)
    assert run([salted(clips[0], "a"), salted(clips[1], "c")])[1] == [[0], [0]]
    assert len(backend.prefixes) == kept and run([salted(clips[0], "c")])[1] == [[0]]
    # Drafts: each salt learns from its own answers only; requests without one share the backend's.
    item = lambda salt: [BatchItem(salted(clips[0], salt), SETTINGS, TokenCollector())]  # noqa: E731
    assert backend._drafter_for(item("a")) is backend._drafter_for(item("a"))
    assert backend._drafter_for(item("a")) is not backend._drafter_for(item("b"))
    assert backend._drafter_for(item(None)) is backend.drafter


def test_a_backend_without_kept_prefixes_computes_every_prompt(parts) -> None:
    model, processor, clips, _ = parts
    backend = HFBackend(model, processor, pack_weights=False)
    backend.prefixes = None  # as `affect-llm serve --no-prefix-caching` sets it
    sinks = [CachedCount(), CachedCount()]
    for clip, sink in zip(clips[:2], sinks, strict=True):
        backend.decode([BatchItem(clip, SETTINGS, sink)])
    assert [s.cached for s in sinks] == [[0], [0]]
    assert backend.generate([clips[0]], SETTINGS) == HFBackend(model, processor, pack_weights=False).generate(
        [clips[0]], SETTINGS)
    backend._decoder_for(True)  # nothing to forget
