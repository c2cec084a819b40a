"""The chat page of `hf-llava serve`, served for real on 127.0.0.1 and used in Debian's Chromium (headless, driven
by Selenium) as a person uses it: attach a picture, type, send. The answer streams into the page piece by piece
and equals the same model's greedy answer in process; a follow-up is answered from the whole conversation; the
stop button frees the engine's row; the page loads nothing from outside the server; with an API key it asks for
the key. With the shipped chat model: an example picture and a follow-up, and a screenshot of them, written to
`$HF_LLAVA_SCREENSHOT` when set (`HF_LLAVA_SCREENSHOT=docs/images/chat-page.png` makes the documentation's)."""

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from hf_llava import tiny
from hf_llava.serve.app import build_app, running
from hf_llava.serve.cli import build_service, load
from hf_llava.serve.messages import ImagePolicy
from hf_llava.serve.ui import mount_ui, world_examples
from tests.serve.conftest import greedy_answer, in_process

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="the chat page's test drives Debian's chromium and chromium-driver, not installed here "
           "(apt-get install chromium chromium-driver; .ci/run installs them)")

QUESTION = "What is shown in the image?"
WINDOW = (1200, 1000)
WAIT = 20  # seconds for the page or an answer
SENTENCE = 64  # tokens: more than the shipped chat model's answers take
# records every text the newest answer shows while it streams in (a message's aria-label is its text)
RECORD = """
window.shown = [];
new MutationObserver(() => {
  const answers = document.querySelectorAll('[data-testid="bot"]');
  if (answers.length !== arguments[0]) return;
  const text = answers[answers.length - 1].getAttribute("aria-label").replace(/^bot's message: /, "");
  if (window.shown[window.shown.length - 1] !== text) window.shown.push(text);
}).observe(document.querySelector('[aria-label="chatbot conversation"]'),
            {subtree: true, childList: true, attributes: true, attributeFilter: ["aria-label"]});
"""


class Page:
    """The chat page open in the browser, used as a person uses it."""

    def __init__(self, driver, base: str):
        from selenium.webdriver.common.by import By

        self.driver, self.base, self.by = driver, base, By
        self.pieces: list = []
        driver.get(base + "/")
        self.wait_for(lambda: self.find('textarea[data-testid="textbox"]'), "the page")

    def wait_for(self, condition, what: str, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not appear within {timeout} s")
            time.sleep(0.05)
        return result

    def find(self, css: str) -> list:
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def click(self, css: str, what: str) -> None:
        """Click the element `css` selects once it is there (in one step in the page: a streaming answer redraws
        the buttons around it many times a second)."""
        script = "const element = document.querySelector(arguments[0]); if (element) element.click(); return !!element;"
        self.wait_for(lambda: self.driver.execute_script(script, css), what)

    def answers(self) -> list:
        return [element.get_attribute("aria-label").removeprefix("bot's message: ")
                for element in self.find('[data-testid="bot"]')]

    def set_max_tokens(self, value: int) -> None:
        if not self.find("#max-tokens input[type=number]"):
            self.driver.find_element(self.by.XPATH, '//*[text()="Sampling"]').click()  # opens the accordion
        field = self.wait_for(lambda: self.find("#max-tokens input[type=number]"), "the max tokens field")[0]
        field.clear()
        field.send_keys(f"{value}\t")

    def send(self, text: str, image: Path = None) -> int:
        """Type `text` (with `image` attached) and send it; returns the number the answer will be."""
        count = len(self.answers()) + 1
        if image is not None:
            self.find('input[data-testid="file-upload"]')[0].send_keys(str(image))
            self.wait_for(lambda: self.find('[aria-label="File thumbnail"] img'), "the attached image's thumbnail")
        self.driver.execute_script(RECORD, count)
        self.find('textarea[data-testid="textbox"]')[0].send_keys(text + "\n")
        return count

    def answer(self, count: int) -> str:
        """Wait for answer number `count` to be whole; returns it. `self.pieces`: every text it showed while it
        streamed in."""
        self.wait_for(lambda: len(self.answers()) == count and self.find('[data-testid="submit-button"]'),
                      f"answer {count}")
        self.pieces = self.driver.execute_script("return window.shown")
        return self.answers()[-1]

    def requested_urls(self) -> set:
        urls = set()
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.add(message["params"]["request"]["url"])
        return {url for url in urls if url.startswith(("http:", "https:", "ws:", "wss:"))}


@contextmanager
def chat_page(service, profile: Path):
    """The chat page of a server for `service` on 127.0.0.1, open in a fresh headless Chromium (`profile`: its user
    data folder). The browser quits before the server stops (its open connections would hold the shutdown)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    with running(build_app(service, ui=True)) as base:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield Page(driver, base)
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def tiny_page(tmp_path_factory):
    model, processor = tiny.build_llava(seed=0)
    service = build_service(model, processor, "tiny-llava", max_batch_size=4, gather_ms=0,
                            policy=ImagePolicy(max_pixels=128 * 128))
    try:
        with chat_page(service, tmp_path_factory.mktemp("chromium")) as page:
            yield page, model, processor, service.engine
    finally:
        service.engine.close()


@needs_browser
def test_an_image_and_a_question_get_the_greedy_answer_streamed_then_a_follow_up(tiny_page, tmp_path):
    page, model, processor, _ = tiny_page
    image = tiny.demo_image(64, seed=1)
    image.save(tmp_path / "picture.png")
    page.set_max_tokens(60)
    answer = page.answer(page.send(QUESTION, tmp_path / "picture.png"))
    assert answer == in_process(model, processor, [image], QUESTION, 60)
    assert len(page.pieces) > 2, page.pieces  # streamed: the answer grew in several steps
    assert all(answer.startswith(piece) for piece in page.pieces)

    follow_up = "And what is on its left?"
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                    {"role": "user", "content": [{"type": "text", "text": follow_up}]}]
    page.set_max_tokens(40)
    second = page.answer(page.send(follow_up))
    assert second == greedy_answer(model, processor, conversation, [image], 40)
    page.driver.execute_script(RECORD, 2)
    page.click('button[aria-label="Retry"]', "the retry button")
    page.wait_for(lambda: page.driver.execute_script("return window.shown.length") > 1, "the new answer")
    assert page.answer(2) == second  # retried: the same conversation answered again (greedy)
    urls = page.requested_urls()
    assert urls and all(url.startswith(page.base) for url in urls), sorted(urls)  # nothing from outside


@needs_browser
def test_stop_ends_the_answer_and_frees_the_engines_row(tiny_page):
    page, _, _, engine = tiny_page
    page.click('button[aria-label="Clear"]', "the clear button")
    page.wait_for(lambda: not page.answers(), "the cleared chat")
    page.set_max_tokens(1500)
    dropped = engine.dropped
    count = page.send("Describe a red square.")
    page.wait_for(lambda: len(page.answers()) == count and page.answers()[-1], "the first words")
    page.click('button[aria-label="Stop"]', "the stop button")
    page.wait_for(lambda: engine.dropped == dropped + 1, "the engine's row to stop")
    page.wait_for(lambda: page.find('[data-testid="submit-button"]'), "the page ready for the next question")
    stopped = page.answers()[-1]
    time.sleep(0.3)
    assert page.answers()[-1] == stopped  # nothing more arrives


@needs_browser
def test_a_refused_image_shows_the_apis_reason(tiny_page, tmp_path):
    page, *_ = tiny_page
    page.click('button[aria-label="Clear"]', "the clear button")
    Image.new("RGB", (200, 100), "red").save(tmp_path / "large.png")
    page.send(QUESTION, tmp_path / "large.png")
    error = page.wait_for(lambda: [e.text for e in page.find(".toast-body") if e.text], "the error")[0]
    assert "'large.png': the image has 200x100 = 20000 pixels, more than this server's limit of 16384" in error
    assert not page.answers()


def test_with_an_api_key_the_page_asks_for_it():
    model, processor = tiny.build_llava(seed=0)
    service = build_service(model, processor, "tiny-llava", max_batch_size=1, gather_ms=0)
    try:
        with running(mount_ui(FastAPI(), service, examples=[], api_key="sesame")) as base:
            assert httpx.get(base + "/config").status_code == 401  # what the page loads first
            with httpx.Client(base_url=base) as client:
                assert client.post("/login", data={"username": "me", "password": "wrong"}).status_code == 400
                assert client.post("/login", data={"username": "me", "password": "sesame"}).status_code == 200
                assert client.get("/config").json()["mode"] == "chat_interface"
    finally:
        service.engine.close()


@needs_browser
def test_an_example_picture_and_a_follow_up_with_the_shipped_chat_model(tmp_path):
    examples = world_examples()
    if not examples:
        pytest.skip("the shipped chat model is not installed (scripts/train_chat_model.py writes it)")
    model, processor, path = load(None, "torch", "cpu")
    service = build_service(model, processor, path.name, max_batch_size=1, gather_ms=0)
    image, question = examples[0]
    follow_up = "How many shapes are there?"
    try:
        with chat_page(service, tmp_path / "chromium") as page:
            page.click('.examples [aria-label^="Select example 1"]', "the first example")
            answer = page.answer(1)
            assert answer == in_process(model, processor, [image], question, SENTENCE)
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                            {"role": "user", "content": [{"type": "text", "text": follow_up}]}]
            second = page.answer(page.send(follow_up))
            assert second == greedy_answer(model, processor, conversation, [image], SENTENCE)
            screenshot = Path(os.environ.get("HF_LLAVA_SCREENSHOT") or tmp_path / "chat-page.png")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.driver.save_screenshot(str(screenshot))
            assert Image.open(screenshot).width == WINDOW[0]
    finally:
        service.engine.close()
