"""The chat page in a real headless browser (Debian's chromium through Selenium and chromium-driver).

``scripts/setup.sh`` installs both, so these tests run everywhere the suite runs; a missing browser
is a failure that names the install command, never a skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from servinghelpers import ANSWER, ANSWER_TEXT

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Counts text updates of the answer being written: a streamed answer arrives in many pieces.
COUNT_UPDATES = """
window.updates = 0;
new MutationObserver(() => { window.updates += 1; })
  .observe(document.getElementById('conversation'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture
def browser(tmp_path: Path) -> WebDriver:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists() and not shutil.which(Path(p).name)]
    assert not missing, f"{missing} not installed: run bash scripts/setup.sh (apt-get install chromium chromium-driver)"
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1280,1000",
                 # A fake microphone and camera, granted without a prompt, for the recording test.
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(browser: WebDriver, server) -> WebDriverWait:
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(ec.text_to_be_present_in_element((By.ID, "model-info"), "affect-tiny"))
    return wait


def ask(browser: WebDriver, wait: WebDriverWait, question: str = "", turn: int = 1) -> None:
    browser.find_element(By.ID, "question").send_keys(question)
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".turn.assistant .structured")) >= turn
               or b.find_element(By.ID, "error").is_displayed())


def test_a_picked_clip_gets_streamed_labels_explanation_and_evidence(browser: WebDriver, server, clip_dir: Path,
                                                                      tmp_path: Path) -> None:
    wait = open_page(browser, server)
    browser.find_element(By.ID, "media-file").send_keys(str(clip_dir / "clip.mp4"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#preview video")))
    browser.execute_script(COUNT_UPDATES)
    ask(browser, wait)
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, ".turn.assistant .raw").text == ANSWER_TEXT
    assert browser.execute_script("return window.updates") > 10  # tokens arrived one by one
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".labels .label")]
    assert labels == ANSWER["labels"]
    assert browser.find_element(By.CSS_SELECTOR, ".explanation").text == ANSWER["explanation"]
    evidence = {e.get_attribute("data-channel"): e.text for e in browser.find_elements(By.CSS_SELECTOR, ".evidence dd")}
    assert evidence == {"audio": ANSWER["evidence"]["audio"], "video": ANSWER["evidence"]["video"],
                        "text": "not in this clip"}
    browser.save_screenshot(str(tmp_path / "answer.png"))
    ask(browser, wait, "Which channel shows it most clearly?", turn=2)  # a follow-up on the same clip
    assert len(browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")) == 2


def test_an_undecodable_file_shows_the_servers_reason(browser: WebDriver, server, clip_dir: Path) -> None:
    wait = open_page(browser, server)
    browser.find_element(By.ID, "media-file").send_keys(str(clip_dir / "corrupt.wav"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#preview audio")))
    ask(browser, wait)
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "400" in error.text and "cannot decode the media" in error.text
    assert not browser.find_elements(By.CSS_SELECTOR, ".turn")  # nothing pretends to be an answer


def test_a_recorded_clip_is_sent_as_wav_and_answered(browser: WebDriver, server) -> None:
    wait = open_page(browser, server)
    browser.find_element(By.ID, "record-audio").click()
    wait.until(ec.visibility_of_element_located((By.ID, "stop-recording")))
    WebDriverWait(browser, 5, poll_frequency=1.5).until(lambda b: b.execute_script(
        "return window.recordedFor = (window.recordedFor || 0) + 1") > 1)  # about 1.5 s of sound
    browser.find_element(By.ID, "stop-recording").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "preview"), "recording.wav (audio"))
    ask(browser, wait)
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".labels .label")] == ANSWER["labels"]
    assert "Read: audio" in browser.find_element(By.CSS_SELECTOR, ".turn.assistant").text


def test_a_recorded_video_is_read_by_the_server(browser: WebDriver, server) -> None:
    """A browser's MediaRecorder writes WebM as a stream (no duration, no index); the server still reads it."""
    wait = open_page(browser, server)
    browser.find_element(By.ID, "record-video").click()
    wait.until(ec.visibility_of_element_located((By.ID, "stop-recording")))
    # A second click must not open a second camera and microphone that Stop would leave running.
    assert not browser.find_element(By.ID, "record-audio").is_enabled()
    WebDriverWait(browser, 5, poll_frequency=1.5).until(lambda b: b.execute_script(
        "return window.recordedFor = (window.recordedFor || 0) + 1") > 1)
    browser.find_element(By.ID, "stop-recording").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "preview"), "recording.webm (video"))
    assert browser.find_element(By.ID, "record-video").is_enabled()
    ask(browser, wait)
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    read = browser.find_element(By.CSS_SELECTOR, ".turn.assistant").text.rsplit("Read: ", 1)[-1]
    assert "audio" in read and ("video" in read or "face" in read), read


def test_a_new_clip_or_conversation_drops_the_answer_still_streaming(browser: WebDriver, server,
                                                                     clip_dir: Path) -> None:
    wait = open_page(browser, server)
    browser.find_element(By.ID, "media-file").send_keys(str(clip_dir / "clip.wav"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#preview audio")))
    browser.find_element(By.ID, "transcript").send_keys("Wait, is that my name?")
    # Ask, and start a new conversation before the answer can have arrived.
    browser.execute_script("document.getElementById('ask').click();"
                           "setTimeout(() => document.getElementById('new-conversation').click(), 0);")
    wait.until(lambda b: not b.execute_script("return state.busy"))
    assert browser.execute_script("return state.history.length") == 0
    assert not browser.find_elements(By.CSS_SELECTOR, ".turn")
    assert not browser.find_element(By.ID, "error").is_displayed()
    # The answer of the clip's first turn: words were given, so a null for them is the model's, not absence.
    ask(browser, wait)
    evidence = {e.get_attribute("data-channel"): e.text for e in browser.find_elements(By.CSS_SELECTOR, ".evidence dd")}
    assert evidence["text"] == "no evidence given", evidence
    # A follow-up needs a question: an empty one would send an empty turn.
    ask(browser, wait)
    assert "Ask a question about the clip" in browser.find_element(By.ID, "error").text
    assert len(browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")) == 1
    # Stop while the answer streams: nothing is kept, the question can be asked again.
    browser.find_element(By.ID, "question").send_keys("Why?")
    browser.execute_script("document.getElementById('ask').click();"
                           "setTimeout(() => document.getElementById('stop-answer').click(), 0);")
    wait.until(lambda b: not b.execute_script("return state.busy"))
    assert browser.find_element(By.ID, "question").get_attribute("value") == "Why?"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")) == 1
    assert browser.execute_script("return state.history.length") == 2
    # A new clip starts a conversation without the previous clip's words.
    browser.find_element(By.ID, "media-file").send_keys(str(clip_dir / "clip.png"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#preview img")))
    assert browser.find_element(By.ID, "transcript").get_attribute("value") == ""
    assert not browser.find_elements(By.CSS_SELECTOR, ".turn")
