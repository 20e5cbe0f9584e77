"""The curriculum recipe: one class, named phases, one CPU to many GPUs through accelerate.

    affect-llm train training/smoke.yaml                      # one process
    accelerate launch --config_file training/accelerate/multi_gpu_ddp.yaml -m affect_llm.cli.main \
        train training/gpu_7b_qlora.yaml                      # many

Phases: ``setup_data`` (manifests, splits), ``setup_model`` (fresh or the previous stage's output,
loaded strictly), ``featurize`` (frozen-encoder features into the cache), ``train_stage``
(optimizer steps with accumulation over batches a DataLoader reads lazily, validation,
best-checkpoint selection on the validation split), ``save_checkpoint``. Finished stages are
skipped on rerun; ``resume`` continues a stage mid-way.
"""

from __future__ import annotations

import json
import logging
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from transformers import get_scheduler

from affect_llm.data.issues import RefusedInputError
from affect_llm.data.manifest import ManifestRow
from affect_llm.features.speakers import save_statistics
from affect_llm.fileio import OutputLock
from affect_llm.hashing import file_sha256
from affect_llm.loading.build import build_model
from affect_llm.loading.checkpoint import load_checkpoint, save_checkpoint
from affect_llm.memory import release_free_memory
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.modeling.trainable import (
    adapter_settings_mismatch,
    apply_lora,
    compile_counts,
    compile_llm_layers,
    enable_gradient_checkpointing,
    group_parameters,
    llm_weight_summary,
    set_adapter_dropout,
    set_llm_attention,
    set_trainable,
)
from affect_llm.processing.processor import AffectProcessor, batch_to_device
from affect_llm.training.config import StageConfig, TrainConfig
from affect_llm.training.config_values import checkpointed_share
from affect_llm.training.data_check import load_splits, stage_data_problems
from affect_llm.training.inputs import StaleStageError, check_inputs, record_inputs, stage_inputs
from affect_llm.training.loader import StageItems, batch_loader
from affect_llm.training.logging import RunLogger
from affect_llm.training.media_source import TrainingMedia
from affect_llm.training.sampler import ScheduleSampler, validation_batches
from affect_llm.training.schedule import iter_schedule, stage_num_steps, validation_samples
from affect_llm.training.sharding import fsdp_requested, full_state_dict, is_sharded, shard_model
from affect_llm.training.stage_loop import (
    DONE_FILE,
    BestRule,
    StepResult,
    Validation,
    finish_stage,
    run_stage_steps,
)
from affect_llm.training.state import (
    git_commit,
    library_versions,
    load_training_state,
    saved_step,
)
from affect_llm.training.step import answer_loss, build_optimizer
from affect_llm.training.targets import answerable

logger = logging.getLogger(__name__)

# Each named speaker's audio statistics (model.audio_speaker_normalisation), as training read them.
SPEAKER_STATISTICS_FILE = "speaker_statistics.safetensors"


def _stage_or_run(stage_value: bool | float | None, run_value: bool | float) -> bool | float:
    """A stage's own loop setting where it gives one, else the run's (``train``)."""
    return run_value if stage_value is None else stage_value


# The supervised stages keep the checkpoint of the lowest validation answer-token loss.
VAL_LOSS = BestRule("val_loss", higher_is_better=False)


class CurriculumRecipe:
    """Runs every stage of a :class:`TrainConfig` in order.

    Args:
        config: The validated config.
        resume: Continue a stage from its last training-state checkpoint.
        restart: Train an interrupted stage again from its first step. With neither, a run whose
            stage has a saved state is refused (the same command run again must not throw away
            hours of a stage without a word).
        models_dir: Where embedded models were prepared (default: the cache).
        strict: Stop at the first refused manifest line or medium instead of recording it.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, models_dir: Path | None = None,
                 strict: bool = False, restart: bool = False) -> None:
        if resume and restart:
            raise ValueError("resume and restart exclude each other")
        self.config = config
        self.resume = resume
        self.restart = restart
        self.strict = strict
        self.refused_lines: list[dict[str, Any]] = []
        self.models_dir = models_dir
        self.run_dir = Path(config.run_dir)
        settings = config.train
        # A rank whose batch lacks a modality leaves that projector without gradient: DDP must allow it.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.accelerator = Accelerator(
            mixed_precision=settings.precision, cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=settings.grad_accum, kwargs_handlers=[ddp],
        )
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.shard = fsdp_requested() and self.world > 1
        if self.shard and settings.precision == "fp16":
            raise ValueError("train.precision=fp16 with FSDP: use bf16 (no loss scaling across shards here)")
        self.rows: dict[str, dict[str, list[ManifestRow]]] = {}
        self.media = TrainingMedia(config.data, self.accelerator, models_dir)
        self.log: RunLogger | None = None

    @property
    def failures(self) -> dict[str, str]:
        """Rows refused because their media could not be decoded (id -> reason)."""
        return self.media.failures

    # -- phases -------------------------------------------------------------------------------------
    def setup_data(self) -> None:
        """Load every declared manifest and split it; a stage or task without usable rows stops the run here."""
        self.rows = load_splits(self.config, strict=self.strict, refused=self.refused_lines)
        problems = stage_data_problems(self.config, self.rows)
        if problems:
            raise ValueError("; ".join(problems))

    def setup_model(self, index: int, previous: Path | None) -> tuple[AffectForConditionalGeneration, AffectProcessor]:
        """A fresh model (``init: base``), the previous stage's output, or a named checkpoint, loaded strictly."""
        start = self.config.start_point(index)
        if start == "base":
            model, processor = build_model(
                self.config.model, self.models_dir, seed=self.config.seed, prompt_version=self.config.prompt_version
            )
            if self.config.lora is not None:
                apply_lora(model, self.config.lora)
            return model, processor
        source = previous if start == "previous" else Path(start)
        # Every stage loads with the run's precision: a QLoRA curriculum keeps its LLM in 4-bit throughout.
        model, processor = load_checkpoint(source, self.models_dir, trainable_lora=True,
                                           precision=self.config.model.precision())
        mismatch = None if self.config.lora is None else adapter_settings_mismatch(model, self.config.lora)
        if mismatch:
            logger.warning("stage %s continues the LoRA adapter of %s as saved there: %s; the config's lora "
                           "block shapes only a fresh adapter (init: base)", self.config.stages[index].name,
                           source, mismatch)
        return model, processor

    def all_rows(self) -> list[ManifestRow]:
        """Every loaded row of every dataset and split."""
        return [r for splits in self.rows.values() for split in splits.values() for r in split]

    def featurize(self, model: AffectForConditionalGeneration, processor: AffectProcessor) -> None:
        """Encoder features of every row into the feature cache (nothing without one: the steps encode)."""
        self.media.prepare(model, processor, self.all_rows())
        if self.strict and self.failures:
            row_id, reason = next(iter(self.failures.items()))
            raise RefusedInputError(f"row {row_id}: {reason}")

    def calibrate_projectors(self, model: AffectForConditionalGeneration, processor: AffectProcessor,
                             stage: StageConfig) -> None:
        """Standardise fresh projectors' inputs with feature statistics of the stage's training rows."""
        rows = [r for name in stage.datasets for r in self.media.usable(self.rows[name]["train"])]
        self.media.calibrate(model, processor, rows)

    def loss_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed answer-token cross-entropy of the local batch and its token count."""
        return answer_loss(model, batch)

    def _global_mean_loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, float, int]:
        """Loss of this process's batch, scaled so that DDP's gradient average equals the global token mean."""
        batch = batch_to_device(batch, self.accelerator.device)
        with self.accelerator.autocast():
            loss_sum, count = self.loss_step(model, batch)
        # One all-reduce for both sums: this runs on every micro-batch.
        total_loss, total = self.accelerator.reduce(torch.stack([loss_sum.detach().float(), count.float()]), "sum")
        scaled = loss_sum * self.world / total.clamp(min=1)
        return scaled, float(total_loss / total.clamp(min=1)), int(batch["attention_mask"].sum())

    def _loader(self, processor: AffectProcessor, model, rows: dict[str, list[ManifestRow]], batches,
                live_encoders: bool):
        source = self.media.source(processor, tuple(self.accelerator.unwrap_model(model).config.modalities),
                                   live_encoders)
        return batch_loader(StageItems(processor, rows, source), batches, self.media.loader_workers(live_encoders),
                            pin_memory=self.accelerator.device.type == "cuda", seed=self.config.seed,
                            packed_rows=self.config.train.packed_rows)

    @torch.no_grad()
    def validate(self, model, processor, stage: StageConfig) -> float | None:
        """Mean answer-token loss on the validation split (the model-selection metric)."""
        val_rows = {n: self.media.usable(self.rows[n]["val"]) for n in stage.datasets}
        samples = validation_samples(
            stage, val_rows, answerable(processor.prompt), self.config.train.val_max_samples)
        if not samples:
            return None
        model.eval()
        loss_sum, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        batches = validation_batches(samples, self.config.train.batch_size, self.rank, self.world)
        for batch in self._loader(processor, model, val_rows, batches, "encoders" in stage.trainable):
            batch = batch_to_device(batch, self.accelerator.device)
            with self.accelerator.autocast():
                s, c = self.loss_step(model, batch)
            loss_sum, count = loss_sum + s.double().cpu(), count + c.double().cpu()
        total = self.accelerator.reduce(torch.stack([loss_sum, count]).to(self.accelerator.device), "sum")
        self._train_mode(model, stage)
        return float(total[0] / total[1]) if total[1] > 0 else None

    def save_checkpoint(self, model, processor, out_dir: Path, metadata: dict[str, Any]) -> None:
        # Every rank takes part in gathering: under FSDP / ZeRO-3 the weights are sharded.
        state = full_state_dict(model) if is_sharded(model) else self.accelerator.get_state_dict(model)
        if self.accelerator.is_main_process:
            unwrapped = self.accelerator.unwrap_model(model)
            save_checkpoint(unwrapped, processor, out_dir, metadata=metadata,
                            store_llm="llm" in metadata.get("trainable", []),
                            store_encoders="encoders" in metadata.get("trainable", []), state_dict=state)
        self.accelerator.wait_for_everyone()

    def _prepare(self, model, stage: StageConfig, settings) -> tuple[Any, Any, list[torch.nn.Parameter]]:
        """Shard or wrap the model for the processes, then build its optimizer over the trainable groups."""
        if self.shard:
            # Sharding replaces the parameters: the optimizer is built over the sharded ones.
            shard_model(model)
        groups = group_parameters(model)
        param_groups = [{"params": [p for p in groups[g] if p.requires_grad], "lr": stage.group_lr.get(g, stage.lr)}
                        for g in stage.trainable]
        params = [p for group in param_groups for p in group["params"]]
        optimizer = build_optimizer(param_groups, stage.lr, settings.weight_decay)
        if not self.shard:
            model, optimizer = self.accelerator.prepare(model, optimizer)
        return model, optimizer, params

    def schedule_and_resume(self, index: int, stage: StageConfig, model, optimizer, num_steps: int) -> tuple[Any, int]:
        """The stage's learning-rate schedule and the step it starts at (a resumed stage: its saved step)."""
        scheduler = get_scheduler(stage.schedule, optimizer, num_warmup_steps=stage.warmup_steps,
                                  num_training_steps=num_steps)
        # The steps' RNG (dropout, sampling) starts from the seed, whatever featurization and calibration
        # drew; a resumed stage then restores the RNG its state saved.
        set_seed(self.config.seed + index)
        state_dir = self.run_dir / "stages" / stage.name / "state"
        if not (self.resume and saved_step(state_dir) is not None):
            return scheduler, 0
        start_step = load_training_state(state_dir, self.accelerator, model, optimizer, scheduler)
        logger.info("stage %s: resumed at step %d of %d", stage.name, start_step, num_steps)
        return scheduler, start_step

    def train_stage(self, index: int, stage: StageConfig, model, processor) -> dict[str, Any]:
        """Run one stage; returns its summary (best validation loss, steps, timings)."""
        settings = self.config.train
        stage_dir = self.run_dir / "stages" / stage.name
        train_rows = {name: self.media.usable(self.rows[name]["train"]) for name in stage.datasets}
        counts = set_trainable(model, stage.trainable)
        summary = {"stage": stage.name, "groups": counts, "losses": [], "llm_weights": llm_weight_summary(model)}
        # Each stage's model is loaded afresh (setup_model): nothing an earlier stage turned on carries over.
        summary["gradient_checkpointing"] = _stage_or_run(stage.gradient_checkpointing, settings.gradient_checkpointing)
        share = checkpointed_share(summary["gradient_checkpointing"], f"stage {stage.name!r}: gradient_checkpointing")
        if share:
            summary["checkpointed_layers"] = enable_gradient_checkpointing(model, share)
        summary["attention"] = set_llm_attention(model, settings.attention)
        if _stage_or_run(stage.compile, settings.compile):
            summary["compiled_layers"] = compile_llm_layers(model)
        model, optimizer, params = self._prepare(model, stage, settings)
        global_batch = settings.batch_size * self.world
        num_steps = stage_num_steps(stage, sum(len(r) for r in train_rows.values()), global_batch * settings.grad_accum)
        summary["steps"] = num_steps
        scheduler, start_step = self.schedule_and_resume(index, stage, model, optimizer, num_steps)
        schedule = partial(iter_schedule, stage, train_rows, answerable(processor.prompt), global_batch,
                           self.config.seed * 1000 + index)
        sampler = ScheduleSampler(schedule, start_step * settings.grad_accum, num_steps * settings.grad_accum,
                                  self.rank, self.world)
        batches = iter(self._loader(processor, model, train_rows, sampler, "encoders" in stage.trainable))

        def one_step() -> StepResult:
            loss, tokens = self._optimizer_step(model, optimizer, params, batches)
            summary["losses"].append(loss)
            return StepResult(loss, tokens * self.world, global_batch * settings.grad_accum)

        def validate() -> Validation:
            loss = self.validate(model, processor, stage)
            return Validation(loss, scalars={"val/loss": loss})

        best = run_stage_steps(self, stage, stage_dir, model, processor, (optimizer, scheduler),
                               range(start_step, num_steps), one_step, validate, VAL_LOSS)
        summary.update(best_val_loss=best["val_loss"], best_step=best["step"])
        if "compiled_layers" in summary:
            summary["compiled"] = compile_counts()
        finish_stage(self, stage_dir, summary)
        return summary

    def _optimizer_step(self, model, optimizer, params, batches) -> tuple[float, int]:
        """One optimizer step over ``grad_accum`` micro-batches: its global mean loss and this process's tokens."""
        settings = self.config.train
        loss_value, tokens = 0.0, 0
        for _ in range(settings.grad_accum):
            batch = next(batches)
            # accumulate() skips gradient sync until the last micro-batch (DDP no_sync, DeepSpeed's own
            # accumulation) and divides the loss by grad_accum.
            with self.accelerator.accumulate(model):
                scaled, global_loss, n_tokens = self._global_mean_loss(model, batch)
                self.accelerator.backward(scaled)
                if self.accelerator.sync_gradients:
                    if settings.max_grad_norm:
                        self.accelerator.clip_grad_norm_(params, settings.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            loss_value += global_loss / settings.grad_accum
            tokens += n_tokens
        return loss_value, tokens

    def _train_mode(self, model, stage: StageConfig) -> None:
        """Train mode, but for frozen encoders: when they run in the step (no cache) they must compute
        what they would have cached, with batch-norm statistics and dropout in eval mode. A frozen
        LoRA adapter's dropout is off too (:func:`set_adapter_dropout`)."""
        model.train()
        unwrapped = self.accelerator.unwrap_model(model)
        if "encoders" not in stage.trainable:
            for encoder in unwrapped.encoders.values():
                encoder.eval()
        set_adapter_dropout(unwrapped, "lora" in stage.trainable)

    # -- whole run ----------------------------------------------------------------------------------
    def manifest_hashes(self) -> dict[str, str]:
        return {n: file_sha256(d.manifest) for n, d in self.config.data.datasets.items()}

    def _reusable(self, stage_dir: Path) -> bool:
        """A finished stage, or an interrupted one that ``--resume`` continues."""
        return (stage_dir / DONE_FILE).is_file() or (self.resume and saved_step(stage_dir / "state") is not None)

    def refuse_silent_restart(self) -> None:
        """Refuse to train over an interrupted stage's saved state unless told ``resume`` or ``restart``.

        Raises:
            ValueError: Naming the state, its step and both flags.
        """
        if self.resume or self.restart:
            return
        for stage in self.config.stages:
            stage_dir = self.run_dir / "stages" / stage.name
            step = saved_step(stage_dir / "state")
            if step is not None and not (stage_dir / DONE_FILE).is_file():
                raise ValueError(f"{stage_dir / 'state'}: stage {stage.name!r} was stopped at step {step}: add "
                                 "--resume to go on from there, or --restart to train it again from its first step")

    def check_reusable_stages(self) -> list[dict[str, Any]]:
        """Every stage's inputs; before anything is written, refuse a reusable stage that other inputs produced."""
        manifests = self.manifest_hashes()
        inputs = [stage_inputs(self.config, i, manifests, self.world) for i in range(len(self.config.stages))]
        retrained: str | None = None  # the stage just before, when it will train (again)
        for index, (stage, stage_input) in enumerate(zip(self.config.stages, inputs, strict=True)):
            stage_dir = self.run_dir / "stages" / stage.name
            if not self._reusable(stage_dir):
                retrained = stage.name
                continue
            check_inputs(stage_dir, stage.name, stage_input)
            if retrained is not None and self.config.start_point(index) == "previous":
                # It started from the output of a stage that is about to change.
                raise StaleStageError(f"{stage_dir}: stage {stage.name!r} is on disk but stage {retrained!r} before "
                                      f"it will be trained again; delete {stage_dir} too")
            retrained = None
        return inputs

    def start_stage_afresh(self, stage_dir: Path, inputs: dict[str, Any]) -> None:
        """Clear what an earlier attempt left (state, best checkpoint) and record this attempt's inputs.

        Without this, a later ``--resume`` could continue another config's state, or keep another
        config's best checkpoint, under this config's inputs.
        """
        if self.accelerator.is_main_process:
            for leftover in ("state", "state.tmp", "best"):
                shutil.rmtree(stage_dir / leftover, ignore_errors=True)
            record_inputs(stage_dir, inputs)
        self.accelerator.wait_for_everyone()

    def write_run_info(self) -> None:
        if not self.accelerator.is_main_process:
            return
        from affect_llm.prompts import load_prompt

        self.run_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "config": self.config.to_dict(),
            "prompt": load_prompt("tasks", self.config.prompt_version).ref,
            "precision": {**self.config.model.precision().to_dict(),
                          "rule": self.config.model.precision().describe(self.config.train.precision)},
            "manifests": self.manifest_hashes(),
            "libraries": library_versions(),
            "git_commit": git_commit(),
            "world_size": self.world,
            "sharding": "fsdp2" if self.shard else self.accelerator.distributed_type.value,
        }
        (self.run_dir / "run_info.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")

    def run_stage(self, index: int, stage: StageConfig, previous: Path | None) -> dict[str, Any]:
        """Set up, featurize, calibrate and train one stage that is not done yet."""
        set_seed(self.config.seed + index)
        model, processor = self.setup_model(index, previous)
        model.to(self.accelerator.device)
        self.featurize(model, processor)
        # Only fresh projectors are calibrated: a loaded one was trained on its own statistics.
        if self.config.start_point(index) == "base":
            self.calibrate_projectors(model, processor, stage)
        self.media.standardise_speakers(model, processor, self.all_rows())
        if self.media.speaker_statistics and self.accelerator.is_main_process:
            save_statistics(self.media.speaker_statistics, self.run_dir / SPEAKER_STATISTICS_FILE)
        # Featurization's freed buffers would otherwise stay resident beneath the steps' peak.
        release_free_memory()
        if stage.kind == "grpo":
            from affect_llm.training.grpo_stage import GrpoStage

            return GrpoStage(self, index, stage, model, processor).run()
        return self.train_stage(index, stage, model, processor)

    def run(self) -> Path:
        """Run (or finish) every stage; returns the final checkpoint folder ``<run_dir>/final``.

        The main process holds ``<run_dir>/run.lock`` meanwhile: a second run into the same folder stops
        with the holder's host and pid instead of mixing checkpoints.

        Raises:
            LockHeldError: When another process is writing this run folder.
        """
        lock = OutputLock(self.run_dir, self.run_dir / "run.lock") if self.accelerator.is_main_process else None
        if lock is not None:
            lock.acquire()
        try:
            return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> Path:
        set_seed(self.config.seed)
        self.refuse_silent_restart()  # before featurization: it may take a while
        problems = self.config.init_problems()
        if problems:
            raise ValueError(problems[0])
        self.setup_data()
        inputs = self.check_reusable_stages()
        self.write_run_info()
        self.log = RunLogger(self.run_dir, self.accelerator.is_main_process, self.config.train)
        previous: Path | None = None
        summaries = []
        try:
            for index, stage in enumerate(self.config.stages):
                stage_dir = self.run_dir / "stages" / stage.name
                if not self._reusable(stage_dir):
                    self.start_stage_afresh(stage_dir, inputs[index])
                if (stage_dir / DONE_FILE).is_file():
                    logger.info("stage %s already done: %s", stage.name, stage_dir / "best")
                    summaries.append(json.loads((stage_dir / DONE_FILE).read_text()))
                else:
                    summaries.append(self.run_stage(index, stage, previous))
                previous = stage_dir / "best"
        finally:
            self.log.close()
        final = self.run_dir / "final"
        if self.accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            shutil.copytree(previous, final)
            result = {"final_checkpoint": str(final), "stages": summaries, "refused_rows": self.failures,
                      "refused_lines": self.refused_lines}
            (self.run_dir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
        self.accelerator.wait_for_everyone()
        return final

