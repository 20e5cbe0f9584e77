"""``train.compile``: a run with compiled LLM layers, through the CLI, follows the uncompiled run's losses.

The compiled run also trains with matmul attention (``train.attention: eager``, as
``training/embedded.yaml`` does), the other with the model's own (sdpa); and it packs each batch
into rows (``train.packed_rows: 2``), the other pads every sample to the batch's longest.

The compiled run also recomputes activations (``gradient_checkpointing``) and its first stage turns both
off for itself (``training/embedded.yaml``'s align turns off only the recomputation): per-stage settings
change neither the losses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainhelpers import read_losses, tiny_config, write_config

from affect_llm.training.stage_loop import DONE_FILE


def _train(folder: Path, manifest: Path, cache: Path, compile_layers: bool) -> Path:
    raw = tiny_config(manifest, folder / "run", cache, stages=2, compile=compile_layers,
                      gradient_checkpointing=compile_layers, attention="eager" if compile_layers else None,
                      packed_rows=2 if compile_layers else 0)
    if compile_layers:  # the first stage overrides both run settings; the second follows them
        raw["stages"][0].update(compile=False, gradient_checkpointing=False)
    config = write_config(folder / "config.yaml", raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "affect_llm.cli.main", "train", str(config)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return folder / "run"


@pytest.mark.slow
def test_compiled_layers_train_as_the_uncompiled_model(synth_manifest: Path, feature_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    eager = _train(tmp_path / "eager", synth_manifest, feature_cache, compile_layers=False)
    compiled = _train(tmp_path / "compiled", synth_manifest, feature_cache, compile_layers=True)
    for stage in ("align", "reason"):
        expected, got = read_losses(eager, stage), read_losses(compiled, stage)
        assert sorted(got) == sorted(expected) and got
        # Fused kernels add in another order: equal to float32 rounding, not bit for bit.
        assert got == pytest.approx(expected, rel=1e-4)
    summaries = {stage: json.loads((compiled / "stages" / stage / DONE_FILE).read_text())
                 for stage in ("align", "reason")}
    assert "compiled_layers" not in summaries["align"] and not summaries["align"]["gradient_checkpointing"]
    assert summaries["reason"]["compiled_layers"] == 2  # the tiny LLM's two layers
    # Compiled for real: a graph break would have run the layers eagerly, with the same losses.
    assert summaries["reason"]["compiled"]["graphs"] >= 1 and summaries["reason"]["compiled"]["graph_breaks"] == 0
    assert summaries["reason"]["gradient_checkpointing"]
    assert {summaries[stage]["attention"] for stage in ("align", "reason")} == {"eager"}
    assert json.loads((eager / "stages" / "reason" / DONE_FILE).read_text())["attention"] == "sdpa"
    assert (compiled / "final").is_dir()
