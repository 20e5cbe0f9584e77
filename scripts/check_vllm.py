"""Check that the vLLM backend answers exactly like HF ``generate`` (greedy) on the same prompts.

Builds (or takes) a checkpoint, featurizes a few synthetic clips (and one clip of each
missing-channel subset, whose absent evidence both backends hold to ``null``), generates greedily
with ``HFBackend`` (one clip at a time) and with ``VLLMBackend``, prints both answers per clip and
exits non-zero when any differ. Run it from the main environment; vLLM runs in ``.venv-vllm`` (made by
``bash scripts/setup_vllm.sh``) unless it imports here.

    python scripts/check_vllm.py                              # small random LLM, seconds of decoding
    python scripts/check_vllm.py --embedded                   # untrained model on the embedded SmolLM2
    python scripts/check_vllm.py --model runs/x/merged --vllm-python .venv-vllm/bin/python
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def small_llm_folder(out: Path) -> Path:
    """A random 2-layer Llama with head size 64 (CPU vLLM has no kernels for the 8 of ``tiny:llm``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from affect_llm.modeling.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_checkpoint(out: Path, embedded: bool) -> Path:
    import torch

    from affect_llm.loading.build import build_model
    from affect_llm.loading.checkpoint import save_checkpoint
    from affect_llm.loading.spec import ModelSpec

    torch.manual_seed(0)
    if embedded:
        spec = ModelSpec(
            llm="smollm2-135m-instruct",
            audio_encoder="whisper-base",
            face_encoder="fer-mini-xception",
            audio_window_seconds=4.0,
        )
    else:
        spec = ModelSpec(
            llm=str(small_llm_folder(out.parent / "small-llm")),
            audio_encoder="tiny:whisper",
            face_encoder="tiny:fer",
            audio_window_seconds=4.0,
            num_audio_tokens=4,
            num_face_tokens=2,
        )
    model, processor = build_model(spec, seed=0)
    # store_llm: the served folder then holds the vocabulary grown by the media tokens, as HF sees it.
    return save_checkpoint(model, processor, out, store_llm=True)


def synthetic_requests(model, processor, folder: Path, count: int):
    """``count`` synthetic clips with every channel, then one clip of each missing-channel subset.

    A clip that lacks a channel is decoded with its evidence held to ``null`` (HF per step, vLLM by
    continuing a departed answer), so those clips check that the two guards agree.
    """
    from affect_llm.data.manifest import load_manifest
    from affect_llm.data.synth import generate_synthetic_set
    from affect_llm.features.featurize import MediaFeaturizer
    from affect_llm.generation.backend import GenerationRequest
    from affect_llm.processing.processor import absent_channels

    manifest = generate_synthetic_set(
        folder, seed=0, num_train=count, num_val=0, num_test_per_cue=0, num_test_per_missing=1
    )
    rows = load_manifest(manifest)
    rows = [r for r in rows if r.split == "train"][:count] + [r for r in rows if r.split != "train"]
    features = MediaFeaturizer(model, processor)(rows)
    requests = []
    for row in rows:
        media = features[row.id]
        messages = processor.build_messages("reason", media.modalities, transcript=row.transcript)
        requests.append(GenerationRequest(messages, media, absent_channels(media.modalities, bool(row.transcript))))
    return requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, help="checkpoint (merged); default: build one in a temporary folder"
    )
    parser.add_argument("--embedded", action="store_true", help="build on the embedded SmolLM2 instead")
    parser.add_argument(
        "--vllm-python", default=None, help="interpreter with vLLM (default .venv-vllm if present)"
    )
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args(argv)

    from affect_llm.generation.backend import DecodingSettings
    from affect_llm.generation.hf_backend import HFBackend
    from affect_llm.generation.load import load_backend
    from affect_llm.loading.checkpoint import load_checkpoint

    python = args.vllm_python
    if python is None and (ROOT / ".venv-vllm/bin/python").is_file():
        python = str(ROOT / ".venv-vllm/bin/python")
    settings = DecodingSettings(max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="check-vllm-") as tmp:
        checkpoint = args.model or build_checkpoint(Path(tmp) / "ckpt", args.embedded)
        model, processor = load_checkpoint(checkpoint)
        requests = synthetic_requests(model, processor, Path(tmp) / "synth", args.prompts)
        hf = HFBackend(model, processor)
        hf_texts = [hf.generate([r], settings)[0] for r in requests]
        backend = load_backend("vllm", checkpoint, vllm_python=python)
        try:
            vllm_texts = backend.generate(requests, settings)
        finally:
            backend.close()
    differ = 0
    for index, (a, b) in enumerate(zip(hf_texts, vllm_texts, strict=True)):
        same = a == b
        differ += not same
        print(f"[{index}] {'same' if same else 'DIFFERENT'}\n  hf:   {a!r}\n  vllm: {b!r}")
    print(f"check_vllm: {len(requests) - differ}/{len(requests)} greedy answers identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
