"""Group relative policy optimisation (GRPO) on the composite model: rollouts, log-probabilities, loss.

Per clip the policy samples ``G`` answers; each answer's reward is compared with the others of its
group (the advantage is the reward minus the group mean, over the group's standard deviation), and
the policy's log-probability of each answer token is pushed up or down by its advantage through the
clipped surrogate objective. An optional KL term keeps the policy near the stage's starting point.

The pieces are plain functions of tensors and the model, so the stage runner
(:mod:`affect_llm.training.grpo_stage`) stays a loop and each piece is tested on its own.

Shape letters: B clips, G answers per clip, R = B x G rollouts, P prompt tokens, C completion tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from affect_llm.modeling.media import MediaInputs
from affect_llm.processing.processor import AffectProcessor


@dataclass(frozen=True)
class Rollouts:
    """``G`` sampled answers for each of ``B`` prompts, flattened prompt-major (``R = B x G`` rows).

    Attributes:
        input_ids: ``(R, P + C)`` left-padded prompt followed by the completion (right-padded).
        attention_mask: ``(R, P + C)``.
        completion_mask: ``(R, C)`` True on completion tokens up to and including the end of turn.
        media: Each prompt's media repeated ``G`` times, in row order.
        texts: The ``R`` decoded answers.
        prompt_length: ``P``.
        row_media: Each row's own media (``R`` entries), to batch a slice of the rows.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    media: MediaInputs
    texts: list[str]
    prompt_length: int
    row_media: tuple[MediaInputs, ...]

    def rows(self, start: int, stop: int) -> Rollouts:
        """Rows ``start:stop`` (the same prompt width ``P``), their media batched on the rows' device."""
        return self.select(range(start, min(stop, len(self.texts))))

    def select(self, rows: Sequence[int]) -> Rollouts:
        """The given rows, in that order (the same prompt width ``P``), their media batched on the rows' device."""
        if list(rows) == list(range(len(self.texts))):
            return self
        device = self.input_ids.device
        index = torch.as_tensor(list(rows), dtype=torch.long, device=device)
        # Per row, not a slice of ``media``: a row without a channel has no entry in that batch.
        row_media = tuple(self.row_media[i] for i in rows)
        return Rollouts(
            input_ids=self.input_ids[index], attention_mask=self.attention_mask[index],
            completion_mask=self.completion_mask[index], media=MediaInputs.concat(row_media).to(device),
            texts=[self.texts[i] for i in rows], prompt_length=self.prompt_length, row_media=row_media,
        )


def repeat_media(media: list[MediaInputs], times: int) -> MediaInputs:
    """One batch holding each item's media ``times`` times, item-major (the rows' order)."""
    return MediaInputs.concat([item for item in media for _ in range(times)])


@torch.no_grad()
def sample_rollouts(
    model: Any, processor: AffectProcessor, items: list[dict[str, Any]], group_size: int, max_new_tokens: int,
    temperature: float, top_p: float = 1.0, synced_gpus: bool = False,
) -> Rollouts:
    """Sample ``group_size`` answers per item (its ``input_ids`` prompt and ``media``) in one batch.

    Args:
        items: Encoded prompts (``processor.encode_text``) with ``media``.
        group_size: ``G``.
        synced_gpus: Keep generating until every process is done (sharded weights gather in each forward).
    """
    batch = processor.collate(items, padding_side="left")
    device = model.get_input_embeddings().weight.device
    ids = batch["input_ids"].repeat_interleave(group_size, 0).to(device)  # (R, P)
    mask = batch["attention_mask"].repeat_interleave(group_size, 0).to(device)
    media = repeat_media([item["media"] for item in items], group_size).to(device)
    tokenizer = processor.tokenizer
    completions = model.generate(
        input_ids=ids, attention_mask=mask, media=media, do_sample=True, temperature=temperature, top_p=top_p,
        top_k=None, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, synced_gpus=synced_gpus,
        # A sampled media placeholder would have no media to stand for in the scoring forward.
        suppress_tokens=media_token_ids(processor),
    )  # (R, C): new tokens only
    completion_mask = completion_token_mask(completions, tokenizer.eos_token_id)
    completions = torch.where(completion_mask, completions, torch.full_like(completions, tokenizer.pad_token_id))
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Rollouts(
        input_ids=torch.cat([ids, completions], dim=1),
        attention_mask=torch.cat([mask, completion_mask.long()], dim=1),
        completion_mask=completion_mask, media=media, texts=texts, prompt_length=ids.shape[1],
        row_media=tuple(item["media"] for item in items for _ in range(group_size)),
    )


def with_reference_answers(
    rollouts: Rollouts, references: Sequence[Sequence[int]], reference_texts: Sequence[str], group_size: int,
    pad_token_id: int, eos_token_id: int,
) -> Rollouts:
    """Each prompt's group of ``group_size`` sampled answers with the prompt's reference answer added last.

    The reference (the answer a supervised stage trains on, token ids ending with the end of turn)
    joins the group as one more member: it is rewarded like the sampled answers, and when it beats
    them its advantage is positive and its tokens are pushed up, so a clip whose right answer the
    policy never samples (several emotions for channels that disagree) still teaches it. Row order
    stays prompt-major: ``group_size`` sampled rows, then the reference (``B x (G + 1)`` rows).

    Args:
        references: One token-id list per prompt (``B``), the answer after the prompt.
        reference_texts: The references' text, scored by the rewards as a sampled answer's would be.
    """
    prompts = len(references)
    if rollouts.input_ids.shape[0] != prompts * group_size or len(reference_texts) != prompts:
        raise ValueError(f"{rollouts.input_ids.shape[0]} rollouts do not hold {group_size} answers for "
                         f"each of {prompts} references")
    start = rollouts.prompt_length
    sampled = rollouts.input_ids[:, start:]
    width = max(sampled.shape[1], *(len(ids) for ids in references))
    grow = width - sampled.shape[1]
    # The sampled rows' masks are kept, not recomputed: a padding token may be the end-of-turn token.
    sampled = torch.nn.functional.pad(sampled, (0, grow), value=pad_token_id)
    sampled_mask = torch.nn.functional.pad(rollouts.completion_mask, (0, grow), value=False)
    answers = torch.full((prompts, width), pad_token_id, dtype=sampled.dtype, device=sampled.device)
    for row, ids in enumerate(references):
        answers[row, : len(ids)] = torch.as_tensor(list(ids), dtype=sampled.dtype)
    lengths = torch.tensor([len(ids) for ids in references], device=sampled.device)
    within = torch.arange(width, device=sampled.device) < lengths[:, None]  # not the padding after it
    answer_mask = completion_token_mask(answers, eos_token_id) & within
    answers = torch.where(answer_mask, answers, torch.full_like(answers, pad_token_id))

    def grouped(rows: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """``(B * G, ...)`` and ``(B, ...)`` -> ``(B * (G + 1), ...)``, each extra row after its group."""
        together = torch.cat([rows.view(prompts, group_size, *rows.shape[1:]), extra.unsqueeze(1)], dim=1)
        return together.flatten(0, 1)

    first_of_group = slice(None, None, group_size)
    prompt_ids = rollouts.input_ids[first_of_group, :start]
    prompt_mask = rollouts.attention_mask[first_of_group, :start]
    completions = grouped(sampled, answers)
    completion_mask = grouped(sampled_mask, answer_mask)
    prompt_rows = grouped(rollouts.input_ids[:, :start], prompt_ids)
    prompt_mask_rows = grouped(rollouts.attention_mask[:, :start], prompt_mask)
    texts = _after_each_group(rollouts.texts, reference_texts, group_size)
    # A reference answers the same clip as its group: the group's media.
    row_media = tuple(_after_each_group(rollouts.row_media, rollouts.row_media[first_of_group], group_size))
    return Rollouts(
        input_ids=torch.cat([prompt_rows, completions], dim=1),
        attention_mask=torch.cat([prompt_mask_rows, completion_mask.to(prompt_mask_rows.dtype)], dim=1),
        completion_mask=completion_mask, media=MediaInputs.concat(row_media).to(sampled.device), texts=texts,
        prompt_length=start, row_media=row_media,
    )


def _after_each_group(rows: Sequence[Any], extra: Sequence[Any], group_size: int) -> list[Any]:
    """Rows in groups of ``group_size``, with ``extra[b]`` after group ``b`` (the list form of ``grouped``)."""
    return [row for b, last in enumerate(extra) for row in (*rows[b * group_size:(b + 1) * group_size], last)]


def media_token_ids(processor: AffectProcessor) -> list[int]:
    """Ids of the media placeholder tokens, which an answer must never contain."""
    return sorted(set(processor.token_ids().values()))


def completion_token_mask(completions: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """``(R, C)`` True up to and including each row's first end-of-turn token (all of it when none)."""
    is_eos = completions == eos_token_id
    seen_before = is_eos.cumsum(dim=1) - is_eos.long()  # end tokens strictly before each position
    return seen_before == 0


def completion_logprobs(model: Any, rollouts: Rollouts, params: dict[str, torch.Tensor] | None = None,
                        temperature: float = 1.0) -> torch.Tensor:
    """``(R, C)`` log-probability of each completion token under the model (or under ``params``).

    ``params`` replaces named parameters for this call only (the stage's starting policy, for the
    KL term), through ``torch.func.functional_call``.
    """
    start = rollouts.prompt_length - 1
    # Only positions that predict a completion token need logits.
    keep = rollouts.input_ids.shape[1] - start - 1
    # Positions count real tokens only, as generation counted them under left padding.
    position_ids = (rollouts.attention_mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = {"input_ids": rollouts.input_ids, "attention_mask": rollouts.attention_mask, "media": rollouts.media,
              "position_ids": position_ids, "logits_to_keep": keep + 1}
    if params is None:
        logits = model(**kwargs).logits
    else:
        logits = torch.func.functional_call(model, params, args=(), kwargs=kwargs, strict=False).logits
    # The distribution the rollouts were sampled from: softmax of the logits over the temperature.
    logits = logits[:, :-1].float() / temperature  # (R, C, V): position t predicts token t + 1
    targets = rollouts.input_ids[:, rollouts.prompt_length:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``(B, G)`` rewards -> advantages normalised within each group (zero for a group of equal rewards)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def _differing_groups(rewards: torch.Tensor) -> torch.Tensor:
    """``(B,)`` True for each of the ``(B, G)`` groups whose rewards are not all equal."""
    return rewards.amax(dim=1) > rewards.amin(dim=1)


def groups_with_signal(rewards: torch.Tensor) -> float:
    """The share of ``(B, G)`` groups whose rewards are not all equal: only those have advantages, so
    a policy right (or wrong) on every sample of most clips learns from few of them."""
    return float(_differing_groups(rewards).float().mean())


def rows_of_groups_with_signal(rewards: torch.Tensor) -> list[int]:
    """Rollout rows (prompt-major) of the ``(B, G)`` groups whose rewards are not all equal.

    A group of equal rewards has advantages of 0 and adds nothing to the policy gradient, only tokens
    to the average it is taken over. When no group has a signal, the first group's rows are returned
    all the same: every process of a distributed run must take part in the backward that
    synchronises gradients, and a group of zero advantages takes part without moving the policy.
    """
    prompts, group = rewards.shape
    kept = _differing_groups(rewards).nonzero().flatten().tolist() or [0]
    return [prompt * group + member for prompt in kept for member in range(group)]


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float = 0.2,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    num_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate objective with an optional KL term, averaged over completion tokens.

    Args:
        logprobs: ``(R, C)`` under the policy being trained (with gradients).
        old_logprobs: ``(R, C)`` under the policy that sampled the rollouts.
        advantages: ``(R,)`` one per rollout.
        mask: ``(R, C)`` completion tokens.
        clip_epsilon: Ratios outside ``[1 - e, 1 + e]`` give no gradient in the direction that
            moves them further out.
        beta: Weight of the KL term (0: none).
        ref_logprobs: ``(R, C)`` under the stage's starting policy; needed when ``beta > 0``.
        num_tokens: Completion tokens the average is over (default: ``mask``'s); the whole step's
            count when these rows are one micro-batch of it, so the parts' losses add up to the step's.

    Returns:
        The loss and its parts (``policy``, ``kl``, ``clipped``: the share of tokens clipped).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("grpo_loss: beta > 0 needs the starting policy's log-probabilities")
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1  # an unbiased, non-negative estimate of KL(policy || start)
        per_token = per_token + beta * kl
    weight = mask.float()
    denominator = (weight.sum() if num_tokens is None else num_tokens.float()).clamp(min=1.0)
    loss = (per_token * weight).sum() / denominator
    with torch.no_grad():  # logged numbers, outside the graph
        stats = {
            "policy": float(((-torch.minimum(unclipped, clipped)) * weight).sum() / denominator),
            "kl": float((kl * weight).sum() / denominator),
            "clipped": float(((unclipped != clipped).float() * weight).sum() / denominator),
        }
    return loss, stats


def policy_loss_backward(
    model: Any, rollouts: Rollouts, advantages: torch.Tensor, micro_batch: int,
    backward: Callable[[torch.Tensor, bool], None],
    ref_logprobs_of: Callable[[Rollouts], torch.Tensor] | None = None, clip_epsilon: float = 0.2, beta: float = 0.0,
    autocast: Callable[[], AbstractContextManager] = nullcontext, temperature: float = 1.0,
) -> tuple[float, dict[str, float]]:
    """The step's GRPO loss over all rollouts, scored and back-propagated ``micro_batch`` rows at a time.

    Activation memory of the scoring forward grows with the rows in it; micro-batches bound it
    while the gradient stays the one-pass gradient: each part's loss is averaged over the whole
    step's completion tokens, so the parts add up to the step's loss.

    Args:
        micro_batch: Rows per forward and backward (0: all rows at once).
        backward: Called with each part's loss and whether it is the last part (a distributed
            wrapper synchronises gradients on the last one only).
        ref_logprobs_of: The stage's starting policy's log-probabilities of a part (needed when ``beta > 0``).
        autocast: Context of each forward (mixed precision); the backward runs outside it.
        temperature: The rollouts' sampling temperature: log-probabilities are those of the
            distribution they were sampled from.

    Returns:
        The step's loss and its parts (``policy``, ``kl``, ``clipped``), as :func:`grpo_loss` returns them.
    """
    total_rows = rollouts.input_ids.shape[0]
    size = micro_batch or total_rows
    num_tokens = rollouts.completion_mask.sum()
    loss_sum, stats_sum = 0.0, {"policy": 0.0, "kl": 0.0, "clipped": 0.0}
    for start in range(0, total_rows, size):
        part = rollouts.rows(start, start + size)
        ref_logprobs = ref_logprobs_of(part) if ref_logprobs_of is not None and beta > 0 else None
        with autocast():
            logprobs = completion_logprobs(model, part, temperature=temperature)
            loss, stats = grpo_loss(logprobs, logprobs.detach(), advantages[start:start + size], part.completion_mask,
                                    clip_epsilon=clip_epsilon, beta=beta, ref_logprobs=ref_logprobs,
                                    num_tokens=num_tokens)
        backward(loss, start + size >= total_rows)
        loss_sum += float(loss.detach())
        stats_sum = {key: stats_sum[key] + value for key, value in stats.items()}
    return loss_sum, stats_sum
