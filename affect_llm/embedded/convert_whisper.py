"""Convert a CTranslate2 (faster-whisper) Whisper model into a transformers folder.

The CTranslate2 ``model.bin`` (format version 6) is little-endian: u32 version, the spec name
(u16 length + bytes), u32 revision, u32 variable count; per variable its name, u8 rank, rank x
u32 dims, u8 dtype, u32 byte count and the raw bytes; then u32 alias count and (alias, target)
name pairs. Attention projections are fused (q,k,v in ``self_attention/linear_0``; k,v in the
cross-attention's ``linear_1``) and are split back here.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from affect_llm.embedded.sources import find_source_file

# CTranslate2 DataType enum values -> numpy dtypes (bfloat16 is widened via torch).
CT2_DTYPES: dict[int, np.dtype | str] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: "bfloat16",
}


@dataclass
class Ct2Model:
    """Parsed CTranslate2 model file.

    Attributes:
        spec: The model spec name (``WhisperSpec``).
        version: Binary format version.
        revision: Spec revision.
        variables: Tensors by name (numpy arrays; bfloat16 is widened to float32).
        aliases: ``alias -> target`` names (a tied output projection, for instance).
    """

    spec: str
    version: int
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases.

        Raises:
            KeyError: If neither a variable nor an alias has that name.
        """
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise KeyError(f"CTranslate2 variable {name!r} not found in spec {self.spec}")
        return self.variables[name]


class _Reader:
    """Cursor over the bytes of a model file; errors name the file and offset."""

    def __init__(self, data: bytes, source: Path) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError(f"{self.source}: truncated at byte {self.pos} (wanted {n} more bytes)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self) -> str:
        # CTranslate2 writes C strings: the length includes a trailing NUL.
        return bytes(self.take(self.unpack("H"))).decode("utf-8").rstrip("\0")


def _read_variable(reader: _Reader) -> tuple[str, np.ndarray]:
    name = reader.string()
    rank = reader.unpack("B")
    shape = tuple(reader.unpack("I") for _ in range(rank))
    dtype_id = reader.unpack("B")
    nbytes = reader.unpack("I")
    if dtype_id not in CT2_DTYPES:
        raise ValueError(f"{reader.source}: variable {name!r} has unknown dtype id {dtype_id}")
    raw = bytes(reader.take(nbytes))
    dtype = CT2_DTYPES[dtype_id]
    if dtype == "bfloat16":
        bits = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16)
        array = bits.float().numpy()
    else:
        array = np.frombuffer(raw, dtype=dtype).copy()
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{reader.source}: variable {name!r} holds {array.size} values for shape {shape}")
    return name, array.reshape(shape)


def read_ct2_model(path: Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin``.

    Raises:
        ValueError: If the file is truncated, has trailing bytes or an unsupported version.
    """
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    version = reader.unpack("I")
    if version < 5 or version > 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (5 or 6)")
    model = Ct2Model(spec=reader.string(), version=version, revision=reader.unpack("I"))
    for _ in range(reader.unpack("I")):
        name, array = _read_variable(reader)
        model.variables[name] = array
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        model.aliases[alias] = target
    if reader.pos != len(reader.data):
        raise ValueError(f"{path}: {len(reader.data) - reader.pos} trailing bytes after the aliases")
    return model


def concatenate_parts(parts: Sequence[Path], dest: Path) -> Path:
    """Join split ``model.bin.partN`` files (in part-number order) into ``dest``."""
    ordered = sorted(parts, key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0))
    with open(dest, "wb") as out:
        for part in ordered:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, length=16 << 20)
    return dest


def _linear(state: dict, prefix: str, ct2: Ct2Model, name: str) -> None:
    state[f"{prefix}.weight"] = ct2.get(f"{name}/weight")
    state[f"{prefix}.bias"] = ct2.get(f"{name}/bias")


def _norm(state: dict, prefix: str, ct2: Ct2Model, name: str) -> None:
    state[f"{prefix}.weight"] = ct2.get(f"{name}/gamma")
    state[f"{prefix}.bias"] = ct2.get(f"{name}/beta")


def _split_fused(
    state: dict, prefix: str, names: Sequence[str], weight: np.ndarray, bias: np.ndarray
) -> None:
    """Split a fused projection; Whisper's k projection has no bias, so a zero bias is dropped."""
    weights, biases = np.split(weight, len(names)), np.split(bias, len(names))
    for proj, w, b in zip(names, weights, biases, strict=True):
        state[f"{prefix}.{proj}.weight"] = w
        if proj == "k_proj":
            if np.any(b != 0):
                raise ValueError(f"{prefix}.k_proj has a non-zero bias that Whisper cannot hold")
            continue
        state[f"{prefix}.{proj}.bias"] = b


def _attention(state: dict, prefix: str, ct2: Ct2Model, name: str, cross: bool) -> None:
    if cross:
        _linear(state, f"{prefix}.q_proj", ct2, f"{name}/linear_0")
        fused = ("k_proj", "v_proj")
        w, b = ct2.get(f"{name}/linear_1/weight"), ct2.get(f"{name}/linear_1/bias")
        _split_fused(state, prefix, fused, w, b)
        _linear(state, f"{prefix}.out_proj", ct2, f"{name}/linear_2")
    else:
        w, b = ct2.get(f"{name}/linear_0/weight"), ct2.get(f"{name}/linear_0/bias")
        _split_fused(state, prefix, ("q_proj", "k_proj", "v_proj"), w, b)
        _linear(state, f"{prefix}.out_proj", ct2, f"{name}/linear_1")


def _layer_count(ct2: Ct2Model, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    return 1 + max(int(m.group(1)) for name in ct2.variables if (m := pattern.match(name)))


def whisper_state_dict(ct2: Ct2Model) -> dict[str, np.ndarray]:
    """Map CTranslate2 Whisper variables onto ``WhisperForConditionalGeneration`` names."""
    state: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(state, f"model.encoder.{conv}", ct2, f"encoder/{conv}")
    state["model.encoder.embed_positions.weight"] = ct2.get("encoder/position_encodings/encodings")
    state["model.decoder.embed_positions.weight"] = ct2.get("decoder/position_encodings/encodings")
    state["model.decoder.embed_tokens.weight"] = ct2.get("decoder/embeddings/weight")
    for stack in ("encoder", "decoder"):
        _norm(state, f"model.{stack}.layer_norm", ct2, f"{stack}/layer_norm")
        for i in range(_layer_count(ct2, stack)):
            src, dst = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            _attention(state, f"{dst}.self_attn", ct2, f"{src}/self_attention", cross=False)
            _norm(state, f"{dst}.self_attn_layer_norm", ct2, f"{src}/self_attention/layer_norm")
            if stack == "decoder":
                _attention(state, f"{dst}.encoder_attn", ct2, f"{src}/attention", cross=True)
                _norm(state, f"{dst}.encoder_attn_layer_norm", ct2, f"{src}/attention/layer_norm")
            _linear(state, f"{dst}.fc1", ct2, f"{src}/ffn/linear_0")
            _linear(state, f"{dst}.fc2", ct2, f"{src}/ffn/linear_1")
            _norm(state, f"{dst}.final_layer_norm", ct2, f"{src}/ffn/layer_norm")
    return state


def whisper_config_from_ct2(ct2: Ct2Model, token_ids: dict[str, int]):
    """Build a ``WhisperConfig`` from the tensor shapes and the tokenizer's special token ids.

    Args:
        ct2: The parsed model.
        token_ids: ``pad_token_id``, ``bos_token_id``, ``eos_token_id``, ``decoder_start_token_id``
            (see :func:`whisper_token_ids`).
    """
    from transformers import WhisperConfig

    d_model = ct2.get("encoder/conv1/weight").shape[0]
    return WhisperConfig(
        vocab_size=ct2.get("decoder/embeddings/weight").shape[0],
        num_mel_bins=ct2.get("encoder/conv1/weight").shape[1],
        d_model=d_model,
        encoder_layers=_layer_count(ct2, "encoder"),
        decoder_layers=_layer_count(ct2, "decoder"),
        encoder_attention_heads=int(ct2.get("encoder/num_heads")),
        decoder_attention_heads=int(ct2.get("decoder/num_heads")),
        encoder_ffn_dim=ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=ct2.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=ct2.get("decoder/position_encodings/encodings").shape[0],
        # Suppression lists live in the generation config only; duplicating them in the model
        # config makes generate() warn on every call.
        suppress_tokens=None,
        begin_suppress_tokens=None,
        tie_word_embeddings=True,
        # WhisperConfig's defaults are the English-only ids; multilingual models differ.
        **token_ids,
    )


def whisper_token_ids(tokenizer) -> dict[str, int]:
    """The special token ids a ``WhisperConfig`` needs, read from the tokenizer."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    return {"pad_token_id": eos, "bos_token_id": eos, "eos_token_id": eos, "decoder_start_token_id": start}


def load_whisper_from_ct2(model_file: Path, token_ids: dict[str, int]):
    """Build a ``WhisperForConditionalGeneration`` (fp32) from a CTranslate2 file.

    Args:
        model_file: The CTranslate2 ``model.bin``.
        token_ids: Special token ids (see :func:`whisper_token_ids`).

    Raises:
        ValueError: If the mapped tensors miss, exceed or mismatch the model's parameters.
    """
    from transformers import WhisperForConditionalGeneration

    ct2 = read_ct2_model(model_file)
    if ct2.spec != "WhisperSpec":
        raise ValueError(f"{model_file}: spec is {ct2.spec!r}, expected 'WhisperSpec'")
    model = WhisperForConditionalGeneration(whisper_config_from_ct2(ct2, token_ids))
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in whisper_state_dict(ct2).items()}
    expected = model.state_dict()
    # proj_out shares the token embedding (a CTranslate2 alias); tying restores it after loading.
    missing = sorted(set(expected) - set(state) - {"proj_out.weight"})
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in state if k in expected and expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{model_file}: missing {missing}, unexpected {unexpected}, shape mismatch {wrong}")
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.eval()


def whisper_generation_config(tokenizer, model_config, ct2_config: dict):
    """Generation settings ``WhisperForConditionalGeneration.generate`` needs for language/task."""
    from transformers import GenerationConfig

    special = {token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens}
    special.update(
        {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.get_vocab() if t.startswith("<|")}
    )
    lang_ids = set(ct2_config.get("lang_ids", []))
    lang_to_id = {token: idx for token, idx in special.items() if idx in lang_ids}
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(
        **whisper_token_ids(tokenizer),
        max_length=model_config.max_target_positions,
        is_multilingual=len(lang_to_id) > 1,
        lang_to_id=lang_to_id,
        task_to_id={
            "transcribe": tokenizer.convert_tokens_to_ids("<|transcribe|>"),
            "translate": tokenizer.convert_tokens_to_ids("<|translate|>"),
        },
        no_timestamps_token_id=tokenizer.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eos])),
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads", [])],
    )


def convert_whisper(src: Path | Sequence[Path], out_dir: Path) -> Path:
    """Convert a faster-whisper (CTranslate2) Whisper model into a transformers folder.

    Args:
        src: Folder(s) holding ``config.json``, ``tokenizer.json`` and either ``model.bin`` or
            its split parts ``model.bin.part1``, ``model.bin.part2``, ...
        out_dir: Destination folder (created).

    Returns:
        ``out_dir`` with the fp32 model, generation config, tokenizer and an 80-mel
        ``WhisperFeatureExtractor`` (a folder ``WhisperProcessor.from_pretrained`` reads).

    Raises:
        FileNotFoundError: If no model file or parts are found in ``src``.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    dirs = [Path(src)] if isinstance(src, (str, Path)) else [Path(p) for p in src]
    ct2_config = json.loads(find_source_file(dirs, "config.json").read_text())
    tokenizer = WhisperTokenizer(tokenizer_file=str(find_source_file(dirs, "tokenizer.json")))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Inside out_dir: a conversion killed here leaves its parts where the caller's clean-up finds them.
    with tempfile.TemporaryDirectory(prefix=".parts-", dir=out_dir) as tmp:
        try:
            model_file = find_source_file(dirs, "model.bin")
        except FileNotFoundError:
            parts = [p for d in dirs for p in d.glob("model.bin.part*")]
            if not parts:
                raise FileNotFoundError(f"no model.bin or model.bin.part* in {dirs}") from None
            model_file = concatenate_parts(parts, Path(tmp) / "model.bin")
        model = load_whisper_from_ct2(model_file, whisper_token_ids(tokenizer))
    model.generation_config = whisper_generation_config(tokenizer, model.config, ct2_config)
    model.save_pretrained(out_dir, safe_serialization=True)
    feature_extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir
