"""A reinforcement stage of the curriculum (``kind: grpo``): sample, reward, and push the policy.

Each optimizer step takes ``train.batch_size`` clips per process from the stage's seeded schedule
(the same sampler and loaders as a supervised stage, so it resumes at its step and each rank gets
its share), samples ``grpo.group_size`` answers per clip with batched HF generation, scores every
answer with the stage's named rewards (:mod:`affect_llm.training.rewards`), normalises the rewards
within each clip's group and takes one step of the clipped surrogate objective, with an optional KL
term to the stage's starting policy (:mod:`affect_llm.training.grpo`).

One policy update per batch of rollouts: the policy that sampled them is the one being trained,
so the sampling log-probabilities are the training forward's, detached (the ratio is 1 and the
clip acts on nothing; the objective is the policy gradient with group-normalised advantages).
With ``grpo.reference_in_group`` each clip's reference answer joins its group as one more member
(scored, not sampled; the logged rewards stay the sampled answers').
The validation reward (greedy answers on the validation split, the mean weighted reward) selects
the best checkpoint; every reward is logged per step.

Shape letters: B clips per process, G answers per clip, R = B x G rollouts, C completion tokens.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from affect_llm.data.manifest import ManifestRow
from affect_llm.modeling.answer_loss import IGNORE_INDEX
from affect_llm.modeling.media import MediaInputs
from affect_llm.modeling.trainable import llm_weight_summary, set_trainable
from affect_llm.processing.processor import AffectProcessor
from affect_llm.training.config import StageConfig
from affect_llm.training.grpo import (
    Rollouts,
    completion_logprobs,
    group_advantages,
    groups_with_signal,
    media_token_ids,
    policy_loss_backward,
    rows_of_groups_with_signal,
    sample_rollouts,
    with_reference_answers,
)
from affect_llm.training.loader import batch_loader
from affect_llm.training.rewards import check_rewards_apply, score_answer
from affect_llm.training.sampler import ScheduleSampler, validation_batches
from affect_llm.training.schedule import Sample, iter_schedule, stage_num_steps, validation_samples
from affect_llm.training.stage_loop import BestRule, StepResult, Validation, finish_stage, run_stage_steps
from affect_llm.training.targets import answer_for, answerable

if TYPE_CHECKING:
    from affect_llm.training.recipe import CurriculumRecipe

logger = logging.getLogger(__name__)
# A reinforcement stage keeps the checkpoint of the highest mean validation reward, the later one of equals.
VAL_REWARD = BestRule("val_reward", higher_is_better=True, later_wins_ties=True)


class PromptItems(Dataset):
    """Sample -> the prompt to answer (token ids), its media, and the row that scores the answers."""

    def __init__(self, processor: AffectProcessor, rows: dict[str, list[ManifestRow]], media: Any,
                 with_reference: bool = False) -> None:
        self.processor, self.rows, self.media = processor, rows, media
        self.with_reference = with_reference

    def __getitem__(self, sample: Sample) -> dict[str, Any]:
        row = self.rows[sample.dataset][sample.index]
        media: MediaInputs = self.media(row)
        messages = self.processor.build_messages(sample.task, media.modalities, transcript=row.words,
                                                 transcript_recognised=row.transcript_recognised)
        item = {"media": media, "row": row, "task": sample.task, "counted": sample.counted}
        if not self.with_reference:
            return {**self.processor.encode_text(messages), **item}
        # The supervised target, tokenised as a supervised stage trains it (end of turn included):
        # one encoding gives the prompt (the tokens without labels) and the answer after it.
        answer = answer_for(row, self.processor.prompt.task_keys(sample.task))
        if answer is None:
            raise ValueError(f"row {row.id!r} has no reference answer for task {sample.task!r}")
        encoded = self.processor.encode_text(messages, answer=answer)
        prompt_length = encoded["labels"].count(IGNORE_INDEX)
        return {"input_ids": encoded["input_ids"][:prompt_length], **item,
                "reference_ids": encoded["input_ids"][prompt_length:], "reference_text": answer}

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


def _as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def mean_rewards(scores: list[dict[str, float | None]]) -> dict[str, float]:
    """Mean of each reward over the answers it applies to."""
    names = {name for score in scores for name in score}
    means = {}
    for name in sorted(names):
        values = [s[name] for s in scores if s.get(name) is not None]
        if values:
            means[name] = sum(values) / len(values)
    return means


class GrpoStage:
    """Runs one ``kind: grpo`` stage for a :class:`~affect_llm.training.recipe.CurriculumRecipe`."""

    def __init__(self, recipe: CurriculumRecipe, index: int, stage: StageConfig, model: Any,
                 processor: AffectProcessor) -> None:
        self.recipe, self.index, self.stage = recipe, index, stage
        self.settings = stage.grpo
        self.model, self.processor = model, processor
        self.accelerator = recipe.accelerator
        self.stage_dir = recipe.run_dir / "stages" / stage.name
        # A row can be rewarded when it records what the task's answer is judged against.
        self._supports = answerable(processor.prompt)
        for task in stage.tasks:
            check_rewards_apply(self.settings.rewards, processor.prompt.task_keys(task), f"stage '{stage.name}'",
                                task)

    # -- data -----------------------------------------------------------------------------------------
    def _loader(self, rows: dict[str, list[ManifestRow]], batches: Any) -> DataLoader:
        live = "encoders" in self.stage.trainable
        modalities = tuple(self.accelerator.unwrap_model(self.model).config.modalities)
        source = self.recipe.media.source(self.processor, modalities, live)
        workers = self.recipe.media.loader_workers(live)
        # Items stay a list: the rollouts collate prompts left-padded, and each keeps its row to score.
        items = PromptItems(self.processor, rows, source, with_reference=self.settings.reference_in_group)
        return batch_loader(items, batches, workers, pin_memory=False,
                            seed=self.recipe.config.seed, collate=_as_list)

    # -- the parts of a step ----------------------------------------------------------------------------
    def _policy(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    def _scoring_mode(self) -> None:
        """Train mode with every dropout off, as TRL's GRPO trainer runs (``disable_dropout``): the
        scoring forward and the reference forward then compute the same function, so the KL term is 0
        until the weights move, and the ratio's gradient is not one dropout mask's noise."""
        self.recipe._train_mode(self.model, self.stage)
        self._policy().eval()

    def _rollouts(self, items: list[dict[str, Any]]):
        policy = self._policy()
        policy.eval()  # sampling without dropout: the answers are the policy's, not a perturbed one's
        with self.accelerator.autocast():
            rollouts = sample_rollouts(
                policy, self.processor, items, self.settings.group_size, self.settings.max_new_tokens,
                self.settings.temperature, self.settings.top_p, synced_gpus=self.recipe.shard,
            )
        self._scoring_mode()
        return rollouts

    def _score(self, items: list[dict[str, Any]], texts: list[str], group: int) -> list[dict[str, float | None]]:
        return [score_answer(text, items[i // group]["row"], self.settings.rewards,
                             self.processor.prompt.task_keys(items[i // group]["task"]))
                for i, text in enumerate(texts)]

    def _step(self, items: list[dict[str, Any]], optimizer: Any, params: list[torch.nn.Parameter],
              reference: dict[str, torch.Tensor] | None) -> dict[str, float]:
        """Sample, score, and take one optimizer step; returns what the step logs."""
        rollouts = self._rollouts(items)
        sampled = self.settings.group_size
        group = sampled
        if self.settings.reference_in_group:
            tokenizer = self.processor.tokenizer
            rollouts = with_reference_answers(
                rollouts, [item["reference_ids"] for item in items], [item["reference_text"] for item in items],
                sampled, tokenizer.pad_token_id, tokenizer.eos_token_id)
            group = sampled + 1
        scores = self._score(items, rollouts.texts, group)
        totals = torch.tensor([s["total"] for s in scores], dtype=torch.float32)
        grouped = totals.view(len(items), group)
        advantages = group_advantages(grouped).flatten()
        signal = groups_with_signal(grouped)
        if self.settings.advantages == "positive":
            advantages = advantages.clamp(min=0.0)
        scored, scored_advantages = rollouts, advantages
        if self.settings.skip_flat_groups:  # groups of equal rewards add no gradient: not scored at all
            kept = rows_of_groups_with_signal(grouped)
            scored, scored_advantages = rollouts.select(kept), advantages[kept]
        advantages = advantages.to(self.accelerator.device)

        def reference_logprobs(part: Rollouts) -> torch.Tensor:
            with torch.no_grad(), self.accelerator.autocast():
                return completion_logprobs(self._policy(), part, params=reference, temperature=self.settings.temperature)

        def backward(loss: torch.Tensor, last: bool) -> None:
            # Gradients are synchronised across processes once, with the step's last part.
            with nullcontext() if last else self.accelerator.no_sync(self.model):
                self.accelerator.backward(loss)

        loss, parts = policy_loss_backward(
            self.model, scored, scored_advantages.to(self.accelerator.device), self.settings.micro_batch, backward,
            reference_logprobs if reference is not None else None,
            clip_epsilon=self.settings.clip_epsilon, beta=self.settings.beta, autocast=self.accelerator.autocast,
            temperature=self.settings.temperature,
        )
        if self.recipe.config.train.max_grad_norm:
            self.accelerator.clip_grad_norm_(params, self.recipe.config.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # The logged rewards and lengths are the policy's own answers', never the references'.
        is_sampled = torch.arange(len(scores)) % group < sampled
        local = mean_rewards([score for score, own in zip(scores, is_sampled.tolist(), strict=True) if own])
        record = {f"reward/{name}": value for name, value in local.items()}
        record.update({f"grpo/{k}": v for k, v in parts.items()})
        record["grpo/completion_tokens"] = float(rollouts.completion_mask[is_sampled].sum(1).float().mean())
        if group > sampled:
            # How far the references lead their groups: near 0 once the policy answers as well as they do.
            record["grpo/reference_reward"] = float(totals[~is_sampled].mean())
            record["grpo/reference_advantage"] = float(advantages[~is_sampled.to(advantages.device)].mean())
        record["grpo/loss"] = loss
        record["grpo/groups_with_signal"] = signal
        record["grpo/rows_scored"] = float(scored.input_ids.shape[0])
        # Every process's means, averaged: each reward over the processes that scored it.
        return self._average_over_processes(record)

    def _average_over_processes(self, record: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return record
        from accelerate.utils import gather_object

        merged: dict[str, list[float]] = {}
        for part in gather_object([record]):
            for key, value in part.items():
                merged.setdefault(key, []).append(value)
        return {key: sum(values) / len(values) for key, values in merged.items()}

    # -- validation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Mean rewards of greedy answers on (up to ``grpo.val_samples``) validation rows."""
        rows = {n: self.recipe.media.usable(self.recipe.rows[n]["val"]) for n in self.stage.datasets}
        samples = validation_samples(self.stage, rows, self._supports, self.settings.val_samples)
        if not samples:
            return None
        batches = validation_batches(samples, self.recipe.config.train.batch_size, self.recipe.rank,
                                     self.recipe.world)
        policy = self._policy()
        policy.eval()
        scores: list[dict[str, float | None]] = []
        tokenizer = self.processor.tokenizer
        for items in self._loader(rows, batches):
            batch = self.processor.collate(items, padding_side="left")
            device = self.accelerator.device
            with self.accelerator.autocast():
                new = policy.generate(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    media=MediaInputs.concat([item["media"] for item in items]).to(device), do_sample=False,
                    max_new_tokens=self.settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id, synced_gpus=self.recipe.shard,
                    suppress_tokens=media_token_ids(self.processor),
                )
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            scores += [score_answer(text, item["row"], self.settings.rewards,
                                    self.processor.prompt.task_keys(item["task"]))
                       for text, item in zip(texts, items, strict=True) if item["counted"]]
        self._scoring_mode()
        sums: dict[str, list[float]] = {}
        for score in scores:
            for name, value in score.items():
                if value is not None:
                    sums.setdefault(name, [0.0, 0.0])
                    sums[name][0] += value
                    sums[name][1] += 1
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            merged: dict[str, list[float]] = {}
            for part in gather_object([sums]):
                for name, (total, count) in part.items():
                    merged.setdefault(name, [0.0, 0.0])
                    merged[name][0] += total
                    merged[name][1] += count
            sums = merged
        return {name: total / count for name, (total, count) in sums.items() if count}

    def _validation(self) -> Validation:
        rewards = self.validate()
        if self.accelerator.is_main_process and rewards is not None:
            logger.info("stage %s: validation rewards %s", self.stage.name,
                        ", ".join(f"{k} {v:.3f}" for k, v in rewards.items()))
        return Validation(None if rewards is None else rewards.get("total"),
                          scalars={f"val/reward/{name}": mean for name, mean in (rewards or {}).items()},
                          metadata={"val_rewards": rewards})

    # -- the stage ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train the stage; returns its summary (rewards per step, best validation reward)."""
        recipe, stage, settings = self.recipe, self.stage, self.recipe.config.train
        train_rows = {name: recipe.media.usable(recipe.rows[name]["train"]) for name in stage.datasets}
        counts = set_trainable(self.model, stage.trainable)
        summary: dict[str, Any] = {"stage": stage.name, "kind": "grpo", "groups": counts, "rewards": [],
                                   "llm_weights": llm_weight_summary(self.model)}
        # The stage's starting policy, for the KL term: a copy of what trains (LoRA and projectors are small).
        reference = None
        if self.settings.beta > 0:
            reference = {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}
        self.model, optimizer, params = recipe._prepare(self.model, stage, settings)
        global_batch = settings.batch_size * recipe.world
        num_steps = stage_num_steps(stage, sum(len(r) for r in train_rows.values()), global_batch)
        summary["steps"] = num_steps
        scheduler, start_step = recipe.schedule_and_resume(self.index, stage, self.model, optimizer, num_steps)
        schedule = partial(iter_schedule, stage, train_rows, self._supports, global_batch,
                           recipe.config.seed * 1000 + self.index)
        batches = iter(self._loader(train_rows, ScheduleSampler(schedule, start_step, num_steps, recipe.rank,
                                                                recipe.world)))
        # Throughput counts the sampled answers (a reference in the group is scored, not generated).
        rollouts = global_batch * self.settings.group_size

        def one_step() -> StepResult:
            record = self._step(next(batches), optimizer, params, reference)
            summary["rewards"].append({k: round(v, 5) for k, v in record.items() if k.startswith("reward/")})
            return StepResult(record["grpo/loss"], record["grpo/completion_tokens"] * rollouts, rollouts, extra=record)

        best = run_stage_steps(recipe, stage, self.stage_dir, self.model, self.processor, (optimizer, scheduler),
                               range(start_step, num_steps), one_step, self._validation, VAL_REWARD)
        summary.update(best_val_reward=best["val_reward"], best_step=best["step"])
        finish_stage(recipe, self.stage_dir, summary)
        return summary
