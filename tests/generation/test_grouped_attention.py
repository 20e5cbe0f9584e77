"""The compiled decoding step's attention: sdpa's answers, the grouped key/value heads never expanded."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from affect_llm.generation.batch_stream import cache_argument
from affect_llm.generation.grouped_attention import (
    GROUPED_SDPA,
    grouped_decoding_attention,
    use_grouped_decoding_attention,
)


class Layer(torch.nn.Module):
    """What the attention functions read from an attention layer."""

    num_key_value_groups = 3
    is_causal = True


def inputs(query_tokens: int, per_head_mask: bool, additive: bool = False):
    """(B, H, Q, D) queries over (B, K, L, D) keys and values; the first row's first positions masked,
    per head a different number of them (head h: h + 1), or the same for every head."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 6, query_tokens, 8, generator=generator)
    key, value = (torch.randn(2, 2, 12, 8, generator=generator) for _ in range(2))
    mask = torch.ones(2, 6 if per_head_mask else 1, query_tokens, 12, dtype=torch.bool)
    for head in range(mask.shape[1]):
        mask[0, head, :, : head + 1 if per_head_mask else 4] = False
    if additive:
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    return query, key, value, mask


def expanded_reference(query, key, value, mask, scale: float) -> torch.Tensor:
    """Attention over the key/value heads expanded to one per query head (head h reads head h // G)."""
    groups = query.shape[1] // key.shape[1]
    key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)  # (B, Q, H, D)


@pytest.mark.parametrize(("per_head_mask", "additive"), [(False, False), (True, False), (True, True)])
def test_one_query_token_gets_sdpa_output(per_head_mask: bool, additive: bool) -> None:
    """Each query head attends over its own group's keys under its own mask: transformers' eager sdpa's
    output exactly (5.25 folds the groups eagerly as well), the expanded computation's to rounding."""
    query, key, value, mask = inputs(1, per_head_mask, additive)
    ours, _ = grouped_decoding_attention(Layer(), query, key, value, mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(Layer(), query, key, value, mask, scaling=0.3)
    assert ours.shape == (2, 1, 6, 8)  # (B, Q, H, D)
    assert torch.equal(ours, theirs)
    torch.testing.assert_close(ours, expanded_reference(query, key, value, mask, 0.3))


def test_several_query_tokens_are_sdpa_own() -> None:
    query, key, value, mask = inputs(5, per_head_mask=False)
    assert torch.equal(grouped_decoding_attention(Layer(), query, key, value, mask)[0],
                       sdpa_attention_forward(Layer(), query, key, value, mask)[0])


def graph_methods(attention) -> tuple[set[str], torch.Tensor]:
    """The tensor methods in the graph dynamo traces of ``attention`` on one query token, and its output."""
    traced: set[str] = set()

    def backend(graph_module: torch.fx.GraphModule, _):
        traced.update(str(node.target) for node in graph_module.graph.nodes if node.op == "call_method")
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(lambda *args: attention(Layer(), *args)[0], backend=backend, fullgraph=True)
    return traced, compiled(*inputs(1, per_head_mask=False))


def test_compiled_it_never_expands_the_key_value_heads() -> None:
    """Under compilation transformers' sdpa expands the keys and values; the grouped attention does not,
    and gives sdpa's eager output."""
    theirs, _ = graph_methods(sdpa_attention_forward)
    ours, output = graph_methods(grouped_decoding_attention)
    assert "expand" in theirs and "expand" not in ours
    assert torch.equal(output, sdpa_attention_forward(Layer(), *inputs(1, per_head_mask=False))[0])


def tiny_llm(heads: int, key_value_heads: int, attention: str):
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=heads, num_key_value_heads=key_value_heads)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention)


def test_only_an_sdpa_llm_with_grouped_heads_is_switched() -> None:
    grouped = tiny_llm(4, 2, "sdpa")
    assert use_grouped_decoding_attention(grouped) and grouped.config._attn_implementation == GROUPED_SDPA
    assert use_grouped_decoding_attention(grouped)  # again: already switched
    for llm in (tiny_llm(4, 4, "sdpa"), tiny_llm(4, 2, "eager")):
        before = llm.config._attn_implementation
        assert not use_grouped_decoding_attention(llm) and llm.config._attn_implementation == before


def test_a_switched_llm_answers_as_before() -> None:
    llm = tiny_llm(4, 2, "sdpa").eval()
    ids = torch.tensor([[3, 5, 7, 9, 11], [0, 0, 4, 6, 8]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])

    def prompt_then_step() -> list[torch.Tensor]:
        with torch.no_grad():
            prompt = llm(input_ids=ids, attention_mask=mask[:, :5], use_cache=True)
            step = llm(input_ids=ids[:, :1], attention_mask=mask, **{cache_argument(llm): prompt.past_key_values})
        return [prompt.logits, step.logits]

    before = prompt_then_step()
    use_grouped_decoding_attention(llm)
    assert all(torch.equal(a, b) for a, b in zip(before, prompt_then_step(), strict=True))
