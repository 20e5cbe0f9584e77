"""GRPO pieces: group advantages, the completion mask, log-probabilities that match sampling, the loss,
and a reference answer added to each group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affect_llm.training.grpo import (
    completion_logprobs,
    completion_token_mask,
    group_advantages,
    groups_with_signal,
    grpo_loss,
    policy_loss_backward,
    rows_of_groups_with_signal,
    sample_rollouts,
    with_reference_answers,
)


def test_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)
    assert torch.equal(adv[1], torch.zeros(4))  # equal rewards teach nothing
    assert groups_with_signal(rewards) == 0.5


def test_completion_mask_stops_after_the_first_end_token():
    completions = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9]])
    assert completion_token_mask(completions, eos_token_id=2).tolist() == [
        [True, True, True, False, False], [True, True, True, True, True]]


def test_loss_pushes_up_the_log_probability_of_a_better_answer():
    logprobs = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    loss, stats = grpo_loss(logprobs, logprobs.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 2, dtype=torch.bool))
    loss.backward()
    assert logprobs.grad[0].lt(0).all() and logprobs.grad[1].gt(0).all()  # descent raises row 0, lowers row 1
    assert stats["clipped"] == 0.0 and stats["kl"] == 0.0


def test_clipping_stops_a_ratio_that_already_moved_too_far():
    old = torch.zeros(1, 1)
    logprobs = torch.log(torch.tensor([[1.5]])).requires_grad_()
    loss, stats = grpo_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 1, dtype=torch.bool), clip_epsilon=0.2)
    loss.backward()
    assert stats["clipped"] == 1.0 and logprobs.grad.abs().sum() == 0


def test_kl_term_is_zero_at_the_start_and_positive_away_from_it():
    ref = torch.tensor([[-1.0, -2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    _, at_start = grpo_loss(ref.clone(), ref, torch.zeros(1), mask, beta=0.1, ref_logprobs=ref)
    _, moved = grpo_loss(ref + 0.5, ref + 0.5, torch.zeros(1), mask, beta=0.1, ref_logprobs=ref)
    assert at_start["kl"] == pytest.approx(0.0) and moved["kl"] > 0
    with pytest.raises(ValueError, match="starting policy"):
        grpo_loss(ref, ref, torch.zeros(1), mask, beta=0.1)


def test_log_probabilities_match_what_sampling_saw(tiny_model, raw_media):
    """The training forward scores each sampled token as generation did (left padding, media, positions)."""
    model, processor = tiny_model
    model.eval()
    items = []
    for modalities, transcript in ((("audio", "face"), "hello there, how are you today?"), (("face",), None)):
        media = processor.prepare_media(**{m: raw_media[m] for m in modalities})
        messages = processor.build_messages("perceive", modalities, transcript=transcript)
        items.append({**processor.encode_text(messages), "media": media})
    torch.manual_seed(0)
    rollouts = sample_rollouts(model, processor, items, group_size=3, max_new_tokens=6, temperature=1.0)
    assert rollouts.input_ids.shape[0] == 6 and len(rollouts.texts) == 6
    with torch.no_grad():
        scored = completion_logprobs(model, rollouts)
        # Reference: score each rollout alone, unpadded, token by token through the model's own forward.
        for row in range(6):
            keep = rollouts.attention_mask[row].bool()
            ids = rollouts.input_ids[row][keep][None]
            logits = model(input_ids=ids, media=items[row // 3]["media"]).logits[0].float()
            n = int(rollouts.completion_mask[row].sum())
            own = torch.log_softmax(logits[-n - 1 : -1], -1).gather(-1, ids[0, -n:, None]).squeeze(-1)
            assert torch.allclose(scored[row, :n], own, atol=1e-4), row
        # Sampled at a temperature, the tokens are scored under the distribution they came from.
        warm = completion_logprobs(model, rollouts, temperature=0.7)
        logits = model(input_ids=ids, media=items[1]["media"]).logits[0].float() / 0.7
        own = torch.log_softmax(logits[-n - 1 : -1], -1).gather(-1, ids[0, -n:, None]).squeeze(-1)
        assert torch.allclose(warm[5, :n], own, atol=1e-4)


def test_a_functional_call_scores_with_other_parameters(tiny_model, raw_media):
    model, processor = tiny_model
    media = processor.prepare_media(face=raw_media["face"])
    items = [{**processor.encode_text(processor.build_messages("perceive", ["face"])), "media": media}]
    torch.manual_seed(1)
    rollouts = sample_rollouts(model, processor, items, group_size=2, max_new_tokens=4, temperature=1.0)
    name, param = next((n, p) for n, p in model.named_parameters() if n.startswith("projectors.face"))
    with torch.no_grad():
        base = completion_logprobs(model, rollouts)
        same = completion_logprobs(model, rollouts, {name: param.detach().clone()})
        other = completion_logprobs(model, rollouts, {name: param.detach() + torch.from_numpy(
            np.full(param.shape, 0.5, np.float32))})
    assert torch.allclose(base, same) and not torch.allclose(base, other)


def three_clips(processor, raw_media) -> list[dict]:
    """Three perceive prompts with their media, the middle one without audio."""
    items = []
    for modalities in (("audio", "face"), ("face",), ("audio", "face")):
        media = processor.prepare_media(**{m: raw_media[m] for m in modalities})
        items.append({**processor.encode_text(processor.build_messages("perceive", modalities)), "media": media})
    return items


def test_micro_batches_give_the_one_pass_loss_and_gradient(tiny_model, raw_media):
    """Rows in parts of two, one clip without audio among them: the same loss and gradient as one pass."""
    model, processor = tiny_model
    items = three_clips(processor, raw_media)
    torch.manual_seed(2)
    rollouts = sample_rollouts(model, processor, items, group_size=3, max_new_tokens=5, temperature=1.0)
    advantages = torch.linspace(-1.0, 1.0, 9)
    params = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for micro_batch in (0, 2):
        model.zero_grad(set_to_none=True)
        lasts = []

        def backward(loss: torch.Tensor, last: bool, lasts: list = lasts) -> None:
            loss.backward()
            lasts.append(last)

        loss, stats = policy_loss_backward(model, rollouts, advantages, micro_batch, backward)
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        results[micro_batch] = (loss, stats, grads, lasts)
    (loss, stats, grads, lasts), (part_loss, part_stats, part_grads, part_lasts) = results[0], results[2]
    assert lasts == [True] and part_lasts == [False] * 4 + [True]  # 9 rows: 2 + 2 + 2 + 2 + 1
    assert part_loss == pytest.approx(loss, abs=1e-6)
    assert part_stats == pytest.approx(stats, abs=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)
    for one, parts in zip(grads, part_grads, strict=True):
        assert torch.allclose(one, parts, atol=1e-6, rtol=1e-4)


def test_a_reference_answer_joins_each_group_and_is_scored_as_the_model_reads_it(tiny_model, raw_media):
    """Two prompts, two sampled answers each: a reference longer than every sample and one shorter
    follow their groups, and their log-probabilities are those of the reference read alone."""
    model, processor = tiny_model
    model.eval()
    tokenizer = processor.tokenizer
    items, references, texts = [], [], []
    for modalities, answer in ((("audio", "face"), '{"labels": ["happy"], "explanation": "' + "a smile " * 12 + '"}'),
                               (("face",), '{"labels": ["sad"]}')):
        media = processor.prepare_media(**{m: raw_media[m] for m in modalities})
        messages = processor.build_messages("perceive", modalities)
        prompt = processor.encode_text(messages)
        full = processor.encode_text(messages, answer=answer)["input_ids"]
        items.append({**prompt, "media": media})
        references.append(full[len(prompt["input_ids"]):])
        texts.append(answer)
    torch.manual_seed(3)
    sampled = sample_rollouts(model, processor, items, group_size=2, max_new_tokens=4, temperature=1.0)
    grouped = with_reference_answers(sampled, references, texts, 2, tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert grouped.input_ids.shape[0] == 6 and len(grouped.row_media) == 6
    assert grouped.texts == [*sampled.texts[:2], texts[0], *sampled.texts[2:], texts[1]]
    width = grouped.input_ids.shape[1] - grouped.prompt_length
    assert width == max(len(r) for r in references) > sampled.completion_mask.shape[1]
    # The sampled rows are unchanged (their masks kept, the completions padded on the right).
    for new, old in ((0, 0), (1, 1), (3, 2), (4, 3)):
        n = sampled.completion_mask.shape[1]
        assert torch.equal(grouped.completion_mask[new, :n], sampled.completion_mask[old])
        assert not grouped.completion_mask[new, n:].any()
        assert torch.equal(grouped.input_ids[new, : grouped.prompt_length + n], sampled.input_ids[old])
    for row, reference in ((2, references[0]), (5, references[1])):
        through_end = reference.index(tokenizer.eos_token_id) + 1  # the answer and its end of turn
        assert int(grouped.completion_mask[row].sum()) == through_end
        assert grouped.input_ids[row, grouped.prompt_length:][:through_end].tolist() == reference[:through_end]
    with torch.no_grad():
        scored = completion_logprobs(model, grouped)
        for row, item, reference in ((2, items[0], references[0]), (5, items[1], references[1])):
            ids = torch.tensor([item["input_ids"] + reference])
            logits = model(input_ids=ids, media=item["media"]).logits[0].float()
            n = int(grouped.completion_mask[row].sum())
            start = len(item["input_ids"])
            own = torch.log_softmax(logits[start - 1 : start - 1 + n], -1).gather(
                -1, ids[0, start : start + n, None]).squeeze(-1)
            assert torch.allclose(scored[row, :n], own, atol=1e-4), row


def test_references_must_match_the_groups(tiny_model, raw_media):
    model, processor = tiny_model
    media = processor.prepare_media(face=raw_media["face"])
    items = [{**processor.encode_text(processor.build_messages("perceive", ["face"])), "media": media}]
    sampled = sample_rollouts(model, processor, items, group_size=2, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="do not hold 3 answers"):
        with_reference_answers(sampled, [[1]], ["x"], 3, 0, 1)


def test_the_stage_scores_with_every_dropout_off(tiny_model, raw_media):
    """LoRA dropout on, the stage in train mode: its scoring forward and its reference forward (the
    starting weights) must compute the same function, so the KL term is 0 before any update."""
    from types import SimpleNamespace

    from affect_llm.modeling.trainable import LoraSettings, apply_lora, set_trainable
    from affect_llm.training.config import StageConfig
    from affect_llm.training.grpo_stage import GrpoStage
    from affect_llm.training.recipe import CurriculumRecipe

    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=2, dropout=0.5))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # the adapter's output reaches the logits
    set_trainable(model, ["projectors", "lora"])
    media = processor.prepare_media(audio=raw_media["audio"])
    items = [{**processor.encode_text(processor.build_messages("perceive", ("audio",))), "media": media}]
    torch.manual_seed(0)
    rollouts = sample_rollouts(model.eval(), processor, items, group_size=2, max_new_tokens=6, temperature=1.0)
    starting = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    # The stage's own mode switch, on the parts it reads (no accelerator is needed for one process).
    recipe = SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    recipe._train_mode = lambda m, s: CurriculumRecipe._train_mode(recipe, m, s)
    stage = GrpoStage.__new__(GrpoStage)
    stage.recipe, stage.model, stage.accelerator = recipe, model, recipe.accelerator
    stage.stage = StageConfig(name="rl", datasets={"a": 1.0}, tasks={"perceive": 1.0}, trainable=["projectors", "lora"],
                              steps=1, kind="grpo")
    recipe._train_mode(model, stage.stage)
    noisy = completion_logprobs(model, rollouts)
    # Dropout's draws differ between the two forwards: far more than rounding.
    assert (noisy - completion_logprobs(model, rollouts, params=starting)).abs().max() > 1e-3
    stage._scoring_mode()
    scored = completion_logprobs(model, rollouts)
    # The same function up to float rounding (a parameter swapped in by functional_call may take
    # another kernel path: 5e-7 apart here); dropout's draws moved the same log-probabilities by 0.2.
    torch.testing.assert_close(scored, completion_logprobs(model, rollouts, params=starting), atol=1e-5, rtol=0)
    assert not any(module.training for name, module in model.named_modules() if name.endswith("lora_dropout"))


def test_skipping_flat_groups_leaves_the_gradient_s_direction(tiny_model, raw_media):
    """A group of equal rewards has advantages of 0: scored or skipped, the policy gradient points the
    same way, and skipped it is not diluted by that group's tokens."""
    model, processor = tiny_model
    items = three_clips(processor, raw_media)
    torch.manual_seed(3)
    rollouts = sample_rollouts(model, processor, items, group_size=3, max_new_tokens=5, temperature=1.0)
    rewards = torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])  # the middle clip: flat
    kept = rows_of_groups_with_signal(rewards)
    assert kept == [0, 1, 2, 6, 7, 8]
    assert rows_of_groups_with_signal(torch.ones(3, 3)) == [0, 1, 2]  # none differ: one group still takes part
    advantages = group_advantages(rewards).flatten()
    assert advantages[3:6].abs().max() == 0
    params = [p for p in model.parameters() if p.requires_grad]
    grads = {}
    for name, part in (("all", rollouts), ("kept", rollouts.select(kept))):
        model.zero_grad(set_to_none=True)
        chosen = advantages if name == "all" else advantages[kept]
        policy_loss_backward(model, part, chosen, 2, lambda loss, last: loss.backward())
        grads[name] = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    assert rollouts.select(kept).texts == [rollouts.texts[i] for i in kept]
    tokens_all = rollouts.completion_mask.sum()
    tokens_kept = rollouts.completion_mask[kept].sum()
    assert grads["all"].abs().sum() > 0
    torch.testing.assert_close(grads["kept"] * tokens_kept / tokens_all, grads["all"], atol=1e-6, rtol=1e-4)
