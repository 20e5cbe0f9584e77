"""CTranslate2 model.bin parsing and the mapping onto transformers' Whisper, on synthetic files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from affect_llm.embedded.convert_whisper import (
    concatenate_parts,
    load_whisper_from_ct2,
    read_ct2_model,
    whisper_state_dict,
)

DTYPE_IDS = {
    np.dtype("float32"): 0,
    np.dtype("int8"): 1,
    np.dtype("int16"): 2,
    np.dtype("int32"): 3,
    np.dtype("float16"): 4,
}
# Special ids inside the tiny 12-token vocabulary.
TOKEN_IDS = {"pad_token_id": 10, "bos_token_id": 10, "eos_token_id": 10, "decoder_start_token_id": 11}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(
    path, variables: dict[str, np.ndarray], aliases: dict[str, str], spec: str = "WhisperSpec"
) -> None:
    """Write a CTranslate2 version-6 model file, byte for byte as the format describes."""
    out = struct.pack("<I", 6) + _string(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, array in variables.items():
        out += _string(name) + struct.pack("<B", array.ndim)
        out += b"".join(struct.pack("<I", d) for d in array.shape)
        raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        out += struct.pack("<B", DTYPE_IDS[array.dtype]) + struct.pack("<I", len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _string(alias) + _string(target)
    path.write_bytes(out)


def test_parser_roundtrip_names_shapes_dtypes_aliases(tmp_path) -> None:
    rng = np.random.default_rng(0)
    variables = {
        "encoder/conv1/weight": rng.standard_normal((4, 2, 3)).astype(np.float16),
        "encoder/layer_0/ffn/linear_0/bias": rng.standard_normal(5).astype(np.float32),
        "decoder/num_heads": np.array(2, dtype=np.int16),
        "decoder/alignment_layer": np.array(-1, dtype=np.int32),
        "decoder/pre_norm": np.array(1, dtype=np.int8),
    }
    write_ct2(tmp_path / "model.bin", variables, {"decoder/projection/weight": "encoder/conv1/weight"})
    model = read_ct2_model(tmp_path / "model.bin")
    assert (model.spec, model.version, model.revision) == ("WhisperSpec", 6, 3)
    assert list(model.variables) == list(variables)
    for name, array in variables.items():
        assert model.variables[name].dtype == array.dtype
        assert model.variables[name].shape == array.shape
        np.testing.assert_array_equal(model.variables[name], array)
    assert model.aliases == {"decoder/projection/weight": "encoder/conv1/weight"}
    assert model.get("decoder/projection/weight") is model.variables["encoder/conv1/weight"]


def test_parser_rejects_truncated_file(tmp_path) -> None:
    write_ct2(tmp_path / "model.bin", {"x": np.zeros(8, np.float32)}, {})
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="cut.bin"):
        read_ct2_model(tmp_path / "cut.bin")


def test_concatenate_parts_orders_by_number(tmp_path) -> None:
    for i, chunk in [(2, b"BB"), (10, b"CC"), (1, b"AA")]:
        (tmp_path / f"model.bin.part{i}").write_bytes(chunk)
    dest = concatenate_parts(sorted(tmp_path.glob("model.bin.part*")), tmp_path / "model.bin")
    assert dest.read_bytes() == b"AABBCC"


def tiny_whisper_variables(rng, d: int = 8, ffn: int = 16, vocab: int = 12, mels: int = 4) -> dict:
    """A 1+1-layer Whisper in CTranslate2 naming, fp16 like the real file."""

    def t(*shape):
        return rng.standard_normal(shape).astype(np.float16)

    v = {
        "encoder/conv1/weight": t(d, mels, 3), "encoder/conv1/bias": t(d),
        "encoder/conv2/weight": t(d, d, 3), "encoder/conv2/bias": t(d),
        "encoder/position_encodings/encodings": t(6, d),
        "encoder/layer_norm/gamma": t(d), "encoder/layer_norm/beta": t(d),
        "encoder/num_heads": np.array(2, np.int16),
        "decoder/embeddings/weight": t(vocab, d),
        "decoder/position_encodings/encodings": t(5, d),
        "decoder/layer_norm/gamma": t(d), "decoder/layer_norm/beta": t(d),
        "decoder/num_heads": np.array(2, np.int16),
    }  # fmt: skip
    qkv_bias = t(3 * d)
    qkv_bias[d : 2 * d] = 0  # CTranslate2 stores Whisper's absent k bias as zeros
    kv_bias = t(2 * d)
    kv_bias[:d] = 0
    for stack in ("encoder", "decoder"):
        p = f"{stack}/layer_0"
        v.update({
            f"{p}/self_attention/linear_0/weight": t(3 * d, d), f"{p}/self_attention/linear_0/bias": qkv_bias,
            f"{p}/self_attention/linear_1/weight": t(d, d), f"{p}/self_attention/linear_1/bias": t(d),
            f"{p}/self_attention/layer_norm/gamma": t(d), f"{p}/self_attention/layer_norm/beta": t(d),
            f"{p}/ffn/linear_0/weight": t(ffn, d), f"{p}/ffn/linear_0/bias": t(ffn),
            f"{p}/ffn/linear_1/weight": t(d, ffn), f"{p}/ffn/linear_1/bias": t(d),
            f"{p}/ffn/layer_norm/gamma": t(d), f"{p}/ffn/layer_norm/beta": t(d),
        })  # fmt: skip
    p = "decoder/layer_0/attention"
    v.update({
        f"{p}/linear_0/weight": t(d, d), f"{p}/linear_0/bias": t(d),
        f"{p}/linear_1/weight": t(2 * d, d), f"{p}/linear_1/bias": kv_bias,
        f"{p}/linear_2/weight": t(d, d), f"{p}/linear_2/bias": t(d),
        f"{p}/layer_norm/gamma": t(d), f"{p}/layer_norm/beta": t(d),
    })  # fmt: skip
    return v


def test_tiny_whisper_maps_every_tensor(tmp_path) -> None:
    rng = np.random.default_rng(0)
    variables = tiny_whisper_variables(rng)
    write_ct2(tmp_path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    model = load_whisper_from_ct2(tmp_path / "model.bin", TOKEN_IDS)
    assert (model.config.d_model, model.config.encoder_layers, model.config.num_mel_bins) == (8, 1, 4)
    state = model.state_dict()
    qkv = variables["encoder/layer_0/self_attention/linear_0/weight"].astype(np.float32)
    np.testing.assert_array_equal(state["model.encoder.layers.0.self_attn.k_proj.weight"].numpy(), qkv[8:16])
    kv = variables["decoder/layer_0/attention/linear_1/weight"].astype(np.float32)
    np.testing.assert_array_equal(state["model.decoder.layers.0.encoder_attn.v_proj.weight"].numpy(), kv[8:])
    # The output projection is tied to the token embedding, as the alias says.
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # Every model tensor except the tied head comes from the file.
    mapped = whisper_state_dict(read_ct2_model(tmp_path / "model.bin"))
    assert set(state) - set(mapped) == {"proj_out.weight"}


def test_nonzero_k_bias_is_an_error(tmp_path) -> None:
    variables = tiny_whisper_variables(np.random.default_rng(0))
    variables["encoder/layer_0/self_attention/linear_0/bias"][8] = 1.0
    write_ct2(tmp_path / "model.bin", variables, {})
    with pytest.raises(ValueError, match="k_proj"):
        load_whisper_from_ct2(tmp_path / "model.bin", TOKEN_IDS)
