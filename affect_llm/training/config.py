"""Typed training configuration: a model, datasets, and a curriculum of stages.

A config is YAML; ``key=value`` overrides address fields with dots (``train.batch_size=4``,
``stages.0.steps=10``). Everything is checked before any compute, and checking changes nothing:
each dataclass refuses its own bad values when it is built (unknown keys and kinds, numbers that are
not numbers, conflicting fields), and :meth:`TrainConfig.validate` the cross-references (stages
naming datasets that are not declared, tasks the prompt file lacks, ``lora`` without a LoRA block).
What needs the data (rows for every stage and task) is :mod:`affect_llm.training.data_check`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from affect_llm.fileio import parse_yaml
from affect_llm.loading.spec import ModelSpec
from affect_llm.modeling.trainable import (
    TRAINABLE_GROUPS,
    LoraSettings,
    attention_name_problem,
    resolve_training_attention,
)
from affect_llm.precision import resolve_training_precision
from affect_llm.training.config_values import (
    build_section,
    check_flag,
    check_whole,
    checkpointed_share,
    number,
)
from affect_llm.training.grpo_config import GrpoSettings

Order = Literal["shuffle", "easy_to_hard"]
Schedule = Literal["constant", "linear", "cosine"]
StageKind = Literal["supervised", "grpo"]
TrainingPrecision = Literal["no", "bf16", "fp16", "auto"]
ORDERS: tuple[str, ...] = get_args(Order)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
STAGE_KINDS: tuple[str, ...] = get_args(StageKind)
PRECISIONS: tuple[str, ...] = get_args(TrainingPrecision)


@dataclass
class DatasetConfig:
    """One dataset: a manifest and the splits used for training and validation."""

    manifest: str
    train_split: str = "train"
    val_split: str = "val"


@dataclass
class StageConfig:
    """One curriculum stage.

    Attributes:
        name: Folder name of the stage's output under ``<run_dir>/stages``.
        datasets: Dataset name -> mixture weight (sampling probability, normalised).
        tasks: Task of the prompt file (``perceive``, ``evidence``, ``reason``) -> mixture weight.
        trainable: Named groups to train (``projectors``, ``lora``, ``llm``, ``encoders``).
        lr: Peak learning rate.
        schedule: ``constant``, ``linear`` or ``cosine`` decay after warmup.
        warmup_steps: Linear warmup steps.
        steps: Optimizer steps; or use ``epochs`` (passes over the stage's training rows).
        epochs: Alternative to ``steps``.
        order: ``shuffle``, or ``easy_to_hard`` by the rows' ``extra.difficulty``.
        init: ``previous`` (the previous stage's output; a first stage starts fresh), ``base``
            (fresh model), or a checkpoint path. :meth:`TrainConfig.start_point` resolves it.
        group_lr: Learning rate per trainable group where it differs from ``lr`` (fresh projectors
            usually want a larger one than a LoRA adapter).
        kind: ``supervised`` (answer-token cross-entropy) or ``grpo`` (reinforcement with verifiable
            rewards, :mod:`affect_llm.training.grpo_stage`; one batch of ``train.batch_size``
            clips per process and step, ``train.grad_accum`` not applied).
        grpo: Settings of a ``grpo`` stage (defaults when omitted); only for that kind.
        gradient_checkpointing: This stage's ``train.gradient_checkpointing`` (None: that setting).
            A stage of short answers runs fastest without it; one of long answers needs it (or a
            share of the layers) to fit.
        compile: This stage's ``train.compile`` (None: that setting).
    """

    name: str
    datasets: dict[str, float]
    tasks: dict[str, float]
    trainable: list[str]
    lr: float = 1e-4
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    steps: int | None = None
    epochs: float | None = None
    order: Order = "shuffle"
    init: str = "previous"
    group_lr: dict[str, float] = field(default_factory=dict)
    kind: StageKind = "supervised"
    grpo: GrpoSettings | None = None
    gradient_checkpointing: bool | float | None = None
    compile: bool | None = None

    def __post_init__(self) -> None:
        # YAML reads 1e-5 as a string: numbers are parsed here, once, as the stage is built.
        where = f"stage {self.name!r}"
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"{where}: kind={self.kind!r}; expected one of {STAGE_KINDS}")
        if self.kind == "grpo":
            if not isinstance(self.grpo, GrpoSettings):
                self.grpo = build_section(GrpoSettings, self.grpo, f"{where}: grpo")
        elif self.grpo is not None:
            raise ValueError(f"{where}: grpo settings given for a {self.kind} stage; add kind: grpo")
        for key in ("gradient_checkpointing", "compile"):
            value = getattr(self, key)
            if value is not None and key == "gradient_checkpointing":
                checkpointed_share(value, f"{where}: {key}")
            elif value is not None:
                check_flag(value, f"{where}: {key}")
            if value is not None and self.kind == "grpo":
                raise ValueError(f"{where}: {key} is a supervised stage's setting; a grpo stage does not use it")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{where}: name={self.name!r}; expected a non-empty text")
        for key in ("datasets", "tasks", "group_lr"):
            if not isinstance(getattr(self, key), dict):
                raise ValueError(f"{where}: {key}={getattr(self, key)!r}; expected a mapping of name: weight")
        if not isinstance(self.trainable, list):
            raise ValueError(f"{where}: trainable={self.trainable!r}; expected a list of groups, e.g. [projectors]")
        check_whole(self.warmup_steps, f"{where}: warmup_steps")
        if self.warmup_steps < 0:
            raise ValueError(f"{where}: warmup_steps={self.warmup_steps}; expected 0 or more")
        if self.steps is not None:
            check_whole(self.steps, f"{where}: steps")
            if self.steps < 1:
                raise ValueError(f"{where}: steps={self.steps}; expected 1 or more")
        if not isinstance(self.init, str) or not self.init:
            raise ValueError(f"{where}: init={self.init!r}; expected previous, base or a checkpoint folder")
        self.lr = number(self.lr, f"{where}: lr")
        if self.epochs is not None:
            self.epochs = number(self.epochs, f"{where}: epochs")
        self.datasets = {k: number(v, f"{where}: datasets.{k}") for k, v in self.datasets.items()}
        self.tasks = {k: number(v, f"{where}: tasks.{k}") for k, v in self.tasks.items()}
        self.group_lr = {k: number(v, f"{where}: group_lr.{k}") for k, v in self.group_lr.items()}
        stray = sorted(set(self.group_lr) - set(self.trainable))
        if stray:
            raise ValueError(f"{where}: group_lr names groups that do not train here: {stray}")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"{where}: set exactly one of steps or epochs")
        bad_groups = sorted(set(self.trainable) - set(TRAINABLE_GROUPS))
        if bad_groups or not self.trainable:
            raise ValueError(f"{where}: trainable groups {bad_groups or '[]'} invalid; known: {list(TRAINABLE_GROUPS)}")
        if self.order not in ORDERS:
            raise ValueError(f"{where}: order={self.order!r}; expected one of {ORDERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{where}: schedule={self.schedule!r}; expected one of {SCHEDULES}")
        if any(w <= 0 for w in [*self.datasets.values(), *self.tasks.values()]):
            raise ValueError(f"{where}: mixture weights must be positive")
        if not self.datasets or not self.tasks:
            raise ValueError(f"{where}: name at least one dataset and one task")

    def validate(self, declared: set[str], tasks: set[str]) -> None:
        """Cross-references: declared datasets, tasks of the prompt file. Changes nothing."""
        where = f"stage {self.name!r}"
        for name in self.datasets:
            if name not in declared:
                raise ValueError(f"{where}: dataset {name!r} is not declared under data.datasets ({sorted(declared)})")
        bad_tasks = sorted(set(self.tasks) - tasks)
        if bad_tasks:
            raise ValueError(f"{where}: tasks {bad_tasks} not in the prompt file (known: {sorted(tasks)})")


@dataclass
class DataConfig:
    """Datasets and how their media are read.

    Attributes:
        datasets: Name -> dataset.
        num_frames: Frames sampled per video.
        detect_faces: Crop faces from frames.
        feature_cache: Folder of the feature cache: features are computed once and read lazily by
            the loaders. None: no cache; the loaders decode every clip and the frozen encoders run
            in every step (for corpora whose features would not fit on disk).
        decode_workers: Processes decoding clips ahead of the encoders (featurization, and the
            training loaders when they decode); 0 decodes in the training process.
        loader_workers: Processes reading cached features and tokenizing for the training and
            validation loaders; 0 reads in the training process.
    """

    datasets: dict[str, DatasetConfig]
    num_frames: int = 4
    detect_faces: bool = True
    feature_cache: str | None = None
    decode_workers: int = 1
    loader_workers: int = 1

    def __post_init__(self) -> None:
        if self.decode_workers < 0 or self.loader_workers < 0:
            raise ValueError(f"data.decode_workers={self.decode_workers} and data.loader_workers="
                             f"{self.loader_workers} must be >= 0")


@dataclass
class TrainSettings:
    """Loop settings shared by all stages.

    Attributes:
        batch_size: Samples per process per micro-batch.
        grad_accum: Micro-batches per optimizer step.
        precision: ``no``, ``bf16`` or ``fp16`` (accelerate mixed precision), or ``auto``: bf16 where
            the machine loading the config multiplies bf16 natively, else ``no``
            (:func:`affect_llm.precision.resolve_training_precision`; resolved here, so the run
            records and fingerprints what it used).
        gradient_checkpointing: Recompute the LLM layers' activations in the backward pass instead
            of keeping them (a stage may override it): true for every layer, or the share of the
            layers (0 to 1, spread evenly through the stack) where memory allows keeping the others.
        compile: Compile each LLM decoder layer (``torch.compile``, dynamic shapes) in supervised
            stages (a stage may override it): the elementwise work between the matmuls (norms,
            rotary, activations, residuals) fuses into a few kernels. The first steps pay the
            compile (about 30 s on a CPU for the embedded LLM); worth it for runs of more than a
            few minutes.
        attention: The LLM's attention implementation while supervised stages train (``eager``,
            ``sdpa``, ``flash_attention_2``, ...; None keeps the one the model loaded with), or
            ``auto`` (resolved here, with ``precision``): ``eager`` on a CPU under bf16 or fp16
            autocast, whose flash kernel runs its bf16 backward well below the machine's matmul
            rate, ``sdpa`` elsewhere (:func:`affect_llm.modeling.trainable.resolve_training_attention`;
            ``training/embedded.yaml`` gives the figures). Explaining and serving keep theirs.
        packed_rows: Pack each micro-batch's samples into at most this many rows, each sample
            attending only to itself (:mod:`affect_llm.processing.packing`); 0 pads every sample to
            the batch's longest. The same samples and loss on fewer positions: worth it where answer
            lengths differ. Fewer rows, less padding, but wider rows (attention grows with a row's
            width squared where the kernel computes the whole mask, as eager attention does).
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping.
        log_every: Steps between log lines and TensorBoard points.
        checkpoint_every: Steps between resumable training-state checkpoints (0: stage end only).
        eval_every: Steps between validation passes (0: stage end only).
        val_max_samples: Cap on validation rows.
        tensorboard: Write TensorBoard event files.
        wandb: Also log to Weights & Biases (needs the wandb package and a login).
    """

    batch_size: int = 8
    grad_accum: int = 1
    precision: TrainingPrecision = "no"
    gradient_checkpointing: bool | float = False
    compile: bool = False
    attention: str | None = None
    packed_rows: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 0
    eval_every: int = 0
    val_max_samples: int = 64
    tensorboard: bool = True
    wandb: bool = False

    def __post_init__(self) -> None:
        self.weight_decay = number(self.weight_decay, "train.weight_decay")
        self.max_grad_norm = number(self.max_grad_norm, "train.max_grad_norm")
        if self.precision is False:  # YAML reads a bare `no` (the documented value) as false
            self.precision = "no"
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision={self.precision!r}; expected one of {PRECISIONS}")
        self.precision = resolve_training_precision(self.precision)
        if self.attention is not None and not isinstance(self.attention, str):
            raise ValueError(f"train.attention={self.attention!r}; expected the name of an attention implementation")
        problem = None if self.attention is None else attention_name_problem(self.attention)
        if problem:
            raise ValueError(f"train.attention={self.attention!r}: {problem}")
        self.attention = resolve_training_attention(self.attention, self.precision)
        checkpointed_share(self.gradient_checkpointing, "train.gradient_checkpointing")
        for key in ("compile", "tensorboard", "wandb"):
            check_flag(getattr(self, key), f"train.{key}")
        for key in ("batch_size", "grad_accum", "log_every", "checkpoint_every", "eval_every", "val_max_samples",
                    "packed_rows"):
            check_whole(getattr(self, key), f"train.{key}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train.batch_size and train.grad_accum must be >= 1")
        if self.packed_rows < 0:
            raise ValueError(f"train.packed_rows={self.packed_rows}; expected 0 (pad) or a number of rows")


@dataclass
class TrainConfig:
    """A whole run: model, LoRA, data, loop settings and stages."""

    run_dir: str
    model: ModelSpec
    data: DataConfig
    stages: list[StageConfig]
    train: TrainSettings = field(default_factory=TrainSettings)
    lora: LoraSettings | None = None
    seed: int = 0
    prompt_version: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], task_names: set[str]) -> TrainConfig:
        raw = dict(raw)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known keys: {sorted(known)}")
        for required in ("run_dir", "model", "data", "stages"):
            if required not in raw:
                raise ValueError(f"config: missing key {required!r}")
        data_raw = dict(raw["data"])
        data_raw["datasets"] = {
            name: build_section(DatasetConfig, spec, f"data.datasets.{name}") for name, spec in data_raw.get("datasets", {}).items()
        }
        config = cls(
            run_dir=raw["run_dir"],
            model=ModelSpec.from_dict(raw["model"]),
            data=build_section(DataConfig, data_raw, "data"),
            stages=[build_section(StageConfig, s, f"stages.{i}") for i, s in enumerate(raw["stages"])],
            train=build_section(TrainSettings, raw.get("train"), "train"),
            lora=build_section(LoraSettings, raw["lora"], "lora") if raw.get("lora") else None,
            seed=raw.get("seed", 0),
            prompt_version=raw.get("prompt_version"),
        )
        config.validate(task_names)
        return config

    def validate(self, task_names: set[str]) -> None:
        """Cross-references between the parts of the config. Changes nothing.

        Raises:
            ValueError: Naming the stage and key.
        """
        names = [s.name for s in self.stages]
        if not names:
            raise ValueError("config: stages is empty")
        if len(set(names)) != len(names):
            raise ValueError(f"config: stage names repeat: {names}")
        for stage in self.stages:
            stage.validate(set(self.data.datasets), task_names)
            if "lora" in stage.trainable and self.lora is None:
                raise ValueError(f"stage {stage.name!r} trains 'lora' but the config has no lora: block")
            if self.model.audio_speaker_normalisation and "encoders" in stage.trainable:
                raise ValueError(f"stage {stage.name!r} trains the encoders, but model.audio_speaker_normalisation "
                                 "standardises cached features: train the encoders without it")
        if self.model.audio_speaker_normalisation and not self.data.feature_cache:
            raise ValueError("model.audio_speaker_normalisation reads each speaker's statistics from cached features: "
                             "set data.feature_cache")

    def init_problems(self) -> list[str]:
        """Stages whose ``init`` names a checkpoint folder that is not there (the run would train the
        stages before it and only then fail), or one trained with another prompt than the config's:
        the stage would go on in the checkpoint's prompt while the run recorded the config's."""
        from affect_llm.loading.checkpoint import META_FILE, read_metadata
        from affect_llm.prompts import load_prompt

        problems = []
        wanted: str | None = None  # read once, and only when a stage starts from a checkpoint
        for index, stage in enumerate(self.stages):
            start = self.start_point(index)
            if start in ("base", "previous"):
                continue
            if not (Path(start) / META_FILE).is_file():
                problems.append(f"stage {stage.name!r}: init={start!r} is not an affect-llm checkpoint folder "
                                f"(no {META_FILE}); use previous, base or a checkpoint's folder")
                continue
            saved = read_metadata(start).get("prompt")
            wanted = wanted or load_prompt("tasks", self.prompt_version).ref
            if saved and saved != wanted:
                problems.append(f"stage {stage.name!r}: init={start!r} was trained with prompt {saved}, the config "
                                f"asks for {wanted}; set prompt_version to the checkpoint's version (or its file "
                                "was edited since)")
        return problems

    def start_point(self, index: int) -> str:
        """Where stage ``index`` starts: ``base``, ``previous`` or a checkpoint path.

        A first stage that says ``previous`` has nothing before it and starts from the base model.
        """
        init = self.stages[index].init
        return "base" if init == "previous" and index == 0 else init

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config mapping."""
    raw = copy.deepcopy(raw)
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r}: expected key=value")
        dotted, text = override.split("=", 1)
        keys = dotted.split(".")
        node: Any = raw
        for depth, key in enumerate(keys):
            where = ".".join(keys[: depth + 1])
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
                    raise ValueError(f"override {override!r}: {where} is not an index of a list of {len(node)}")
                if last:
                    node[int(key)] = parse_yaml(text, f"override {override!r}")
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = parse_yaml(text, f"override {override!r}")
                else:
                    node = node.setdefault(key, {})
            else:
                raise ValueError(f"override {override!r}: {'.'.join(keys[:depth])} is a value "
                                 f"({node!r}), not a mapping or list")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None, task_names: set[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply overrides, and validate it (relative paths stay relative to the cwd)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training config not found")
    raw = parse_yaml(path.read_text(), path) or {}
    raw = apply_overrides(raw, overrides or [])
    if task_names is None:
        from affect_llm.prompts import load_prompt

        task_names = set(load_prompt("tasks", raw.get("prompt_version"))["tasks"])
    try:
        return TrainConfig.from_dict(raw, task_names)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error
