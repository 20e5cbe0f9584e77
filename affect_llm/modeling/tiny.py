"""Tiny random components for tests and the CPU smoke curriculum (no downloads).

``tiny:<kind>`` names in a model spec resolve here: a 2-layer LLM of width 32 with a small
byte-level BPE tokenizer trained on the prompt file, and encoders of width 32.
"""

from __future__ import annotations

from functools import lru_cache

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    Wav2Vec2Config,
    WhisperConfig,
)

from affect_llm.modeling.face_cnn import FerMiniXceptionConfig
from affect_llm.prompts import load_prompt

TINY_WIDTH = 32
TOKENIZER_PROMPT_VERSION = "v2"
_CORPUS_WORDS = (
    "happy sad angry surprised neutral fearful disgusted calm excited frustrated joy sadness anger surprise "
    "The voice is high-pitched and fast loud slow quiet low flat rising shaky tense The face smiles frowns "
    "shows raised brows wide eyes open mouth tight lips The words are positive negative neutral which suggests "
    "labels explanation evidence audio video text null true false, and the ; . : { } [ ] \" 0 1 2 3 4 5 6 7 8 9"
)


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # A fixed prompt version: a new prompt file must not change the tiny tokenizer, and with it the
    # vocabulary and random initialisation behind every tiny-model test's numbers.
    prompt = load_prompt("tasks", TOKENIZER_PROMPT_VERSION)
    corpus = [_CORPUS_WORDS, prompt.text]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus * 4, trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level BPE tokenizer (~600 tokens) with ChatML special tokens."""
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )


def tiny_config(kind: str, vocab_size: int = 640) -> PreTrainedConfig:
    """Config of a tiny random component: ``llm``, ``whisper``, ``wav2vec2``, ``siglip``, ``clip`` or ``fer``."""
    width = TINY_WIDTH
    if kind == "llm":
        # The embedded SmolLM2's context (8192): the server refuses prompts past it, and its load tests
        # decode a few thousand tokens.
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=width, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=False,
        )
    if kind == "whisper":
        return WhisperConfig(
            d_model=width, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
            max_source_positions=1500, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1, max_target_positions=64,
        )
    if kind == "wav2vec2":
        return Wav2Vec2Config(
            hidden_size=width, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4, vocab_size=32,
        )
    if kind == "siglip":
        return SiglipVisionConfig(
            hidden_size=width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8,
        )
    if kind == "clip":
        return CLIPVisionConfig(
            hidden_size=width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, projection_dim=width,
        )
    if kind == "fer":
        return FerMiniXceptionConfig(stem_filters=4, block_filters=(8, 16))
    raise ValueError(f"unknown tiny component {kind!r}: expected llm, whisper, wav2vec2, siglip, clip or fer")
