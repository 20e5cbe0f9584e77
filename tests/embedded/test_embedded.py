"""The converted embedded models behave like the originals (real weights).

Each test prepares its model first (a no-op when the prepared folder is valid), so these tests
also cover the real conversions end to end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from affect_llm.embedded.prepare import prepare_models

pytestmark = pytest.mark.embedded


def prepared(name: str) -> Path:
    try:
        return prepare_models(names=[name])[name]
    except ModuleNotFoundError as error:
        pytest.skip(f"source wheel not installed: {error}")


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def test_whisper_transcribes_espeak_sentence(tmp_path) -> None:
    import jiwer
    import librosa
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    sentence = "Hello, my name is John. I live in London and I work as a teacher."
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "120", "-w", str(wav), sentence], check=True)
    audio, _ = librosa.load(wav, sr=16_000)
    folder = prepared("whisper-base")
    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = processor(audio, sampling_rate=16_000, return_tensors="pt").input_features  # (1, 80, 3000)
    with torch.no_grad():
        ids = model.generate(features, language="en", task="transcribe", max_new_tokens=40)
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert jiwer.wer(_words(sentence), _words(text)) < 0.3, text


def test_fer_calls_astronaut_happy() -> None:
    import cv2
    from skimage import data
    from transformers import AutoModel

    import affect_llm.modeling.face_cnn  # noqa: F401  (registers the auto classes)

    folder = prepared("fer-mini-xception")
    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    cascade = cv2.CascadeClassifier(str(folder / "haarcascade_frontalface_default.xml"))
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)
    assert len(faces) >= 1
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    crop = cv2.resize(gray[y : y + h, x : x + w], (64, 64)).astype(np.float32) / 255.0 * 2.0 - 1.0
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        probs = model.logits(torch.from_numpy(crop)[None, None]).softmax(-1)[0]  # (7,)
    assert model.config.id2label[int(probs.argmax())] == "happy"
    assert float(probs.max()) > 0.9


def test_smollm2_answers_capital_of_france() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = prepared("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
