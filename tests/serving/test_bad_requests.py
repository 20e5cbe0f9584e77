"""Every bad request gets a 4xx naming its problem, and the server serves the next request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from servinghelpers import ANSWER_TEXT, audio_part, b64, image_part, text_part

MODEL = "affect-tiny"


def post(server, body: Any, content_type: str = "application/json") -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.api}/chat/completions", content=data, headers={"Content-Type": content_type},
                      timeout=60)


def chat(*content: dict, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 120, "messages": [{"role": "user", "content": list(content)}], **extra}


def assert_still_serving(server, clip_dir: Path) -> None:
    answer = post(server, chat(audio_part(clip_dir / "clip.wav"), text_part("How does the person feel?")))
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == ANSWER_TEXT


def refusal(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_an_oversized_body_is_413(server, clip_dir: Path) -> None:
    body = json.dumps(chat(text_part("x" * (5 * 1024 * 1024)))).encode()
    error = refusal(post(server, body), 413)
    assert "over the limit of 4.0 MB" in error["message"] and error["code"] == "request_too_large"
    assert_still_serving(server, clip_dir)


def test_an_oversized_medium_is_413_naming_the_part(server, clip_dir: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes((clip_dir / "clip.wav").read_bytes() + bytes(2_500_000))
    error = refusal(post(server, chat(text_part("hi"), audio_part(big))), 413)
    assert error["param"] == "messages[0].content[1].input_audio" and "per medium" in error["message"]
    assert_still_serving(server, clip_dir)


def test_another_content_type_is_415(server, clip_dir: Path) -> None:
    error = refusal(post(server, json.dumps(chat(text_part("hi"))).encode(), "text/plain"), 415)
    assert "application/json" in error["message"] and "text/plain" in error["message"]
    assert_still_serving(server, clip_dir)


def test_malformed_json_is_400_with_its_position(server, clip_dir: Path) -> None:
    error = refusal(post(server, b'{"model": "affect-tiny", "messages": [}'), 400)
    assert error["message"].startswith("malformed JSON body") and "column" in error["message"]
    assert_still_serving(server, clip_dir)


def test_corrupt_media_is_400_naming_the_part(server, clip_dir: Path) -> None:
    error = refusal(post(server, chat(image_part(clip_dir / "clip.png"), audio_part(clip_dir / "corrupt.wav"))), 400)
    assert error["param"] == "messages[0].content[1].input_audio"
    assert "cannot decode" in error["message"] and "corrupt" not in error["message"]  # no server paths leak
    assert_still_serving(server, clip_dir)


def test_empty_media_is_400_saying_it_is_empty(server, clip_dir: Path) -> None:
    empty = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    error = refusal(post(server, chat(text_part("hi"), empty)), 400)
    assert error["param"] == "messages[0].content[1].input_audio"
    assert "the data is empty (0 bytes), not audio" in error["message"], error["message"]
    assert_still_serving(server, clip_dir)


def test_media_are_sniffed_by_content_not_by_the_claimed_type(server, clip_dir: Path) -> None:
    png_as_wav = {"type": "input_audio", "input_audio": {"data": b64(clip_dir / "clip.png"), "format": "wav"}}
    error = refusal(post(server, chat(png_as_wav)), 400)
    assert "the data is a png image, not audio" in error["message"]
    wav_as_image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(clip_dir / 'clip.wav')}"}}
    assert "wav audio, not an image" in refusal(post(server, chat(wav_as_image)), 400)["message"]
    assert_still_serving(server, clip_dir)


def test_a_path_outside_the_allowed_folder_is_403(server, clip_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.wav"
    outside.write_bytes((clip_dir / "clip.wav").read_bytes())
    sneaky = clip_dir / "link.wav"
    sneaky.symlink_to(outside)
    for path in (outside, sneaky, Path(f"{clip_dir}/../{tmp_path.name}/outside.wav")):
        part = {"type": "audio_url", "audio_url": {"url": f"file://{path}"}}
        error = refusal(post(server, chat(part)), 403)
        assert "outside the allowed media folder" in error["message"] and error["code"] == "path_not_allowed"
    sneaky.unlink()
    assert_still_serving(server, clip_dir)


def test_remote_urls_are_not_fetched(server, clip_dir: Path) -> None:
    part = {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/face.png"}}
    assert "remote URLs are not fetched" in refusal(post(server, chat(part)), 400)["message"]


def test_an_unknown_model_is_404_through_the_official_client(server, clip_dir: Path) -> None:
    client = OpenAI(base_url=server.api, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="'gpt-4o' does not exist; this server serves 'affect-tiny'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert_still_serving(server, clip_dir)


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model", "Field required"),
    (chat(text_part("hi"), stop=["\n"]), "stop", "does not support this field"),
    (chat({"type": "input_video", "data": "x"}), "messages[0].content[0]", "does not match any of the expected tags"),
    (chat(text_part("hi"), max_tokens=100_000), "max_tokens", "over this server's limit of 4096"),
    (chat(text_part("hi"), task="summarise"), "task", "unknown task 'summarise'"),
    ({"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]},
     "messages[0].role", "'system' messages are not supported"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}]},
     "messages[0].content[0].input_audio", "not valid base64"),
])
def test_invalid_fields_are_400_naming_the_field(server, body: dict, param: str, words: str) -> None:
    error = refusal(post(server, body), 400)
    assert error["param"] == param and words in error["message"] and error["message"].startswith(param)


def test_two_different_clips_in_one_conversation_are_refused(server, clip_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.wav"
    other.write_bytes((clip_dir / "clip.wav").read_bytes()[:-2000])
    body = {"model": MODEL, "messages": [
        {"role": "user", "content": [audio_part(clip_dir / "clip.wav")]},
        {"role": "assistant", "content": "happy"},
        {"role": "user", "content": [audio_part(other), text_part("and this one?")]}]}
    error = refusal(post(server, body), 400)
    assert error["param"] == "messages[2].content[0].input_audio" and "one clip" in error["message"]
