"""The real thing: `python -m proj.serve` as a process on a free 127.0.0.1 port, a few hundred real MNIST test images
sent over HTTP (answered as proj.predict answers them), the page in a headless Chromium, and SIGTERM. One server
for the whole module, of a model fitted for seconds on real MNIST (synthetic digits where it is absent)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

import proj.fit
import proj.predict
from conftest import ROOT
from proj.data import MNISTDataModule
from proj.data.synthetic import write_synthetic_mnist
from test_predict import read_csv
from test_real_data import SHARED_DATA

pytestmark = pytest.mark.slow

IMAGES = 300
REAL = (SHARED_DATA / "MNIST" / "raw").is_dir()
BROWSER = {"chromium": "/usr/bin/chromium", "chromedriver": "/usr/bin/chromedriver"}
INSTALL_BROWSER = "apt-get update && apt-get install -y chromium chromium-driver"


@dataclass
class Live:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    folder: Path  # the server's working folder, its stdout and stderr
    images: list[Path]  # MNIST test images as PNG files
    labels: list[int]
    checkpoint: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fit(data_dir: Path, logs: Path) -> Path:
    """An MLP fitted for seconds: ~90% on real MNIST."""
    flags = ["--model", "MLPClassifier", "--model.hidden_sizes", "[64]", "--data.data_dir", str(data_dir)]
    flags += ["--data.val_size", "100", "--data.batch_size", "128", "--data.num_workers", "0"]
    flags += ["--data.download", "false", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1"]
    flags += ["--trainer.limit_train_batches", "100", "--trainer.limit_val_batches", "1", "--trainer.callbacks", "[]"]
    flags += ["--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(logs)]
    proj.fit.main([*flags, "--test_after_fit", "false"])
    return logs / "mnist" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("live")
    data_dir = SHARED_DATA if REAL else write_synthetic_mnist(folder / "data", 1000, IMAGES)
    checkpoint = fit(data_dir, folder / "logs")
    images, labels = MNISTDataModule(data_dir, download=False).read_split("test")
    (folder / "images").mkdir()
    paths = [folder / "images" / f"{index:03d}.png" for index in range(IMAGES)]
    for path, image in zip(paths, images, strict=False):
        Image.fromarray(image[0].numpy()).save(path)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "proj.serve", "--ckpt_path", str(checkpoint), "--port", str(port)]
    start = time.monotonic()
    with (folder / "stdout").open("wb") as out, (folder / "stderr").open("wb") as err:
        process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=err, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert process.poll() is None, (folder / "stderr").read_text()
            assert time.monotonic() - start < 240, "the server did not become healthy in 4 minutes"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:  # not listening yet: it starts once the model is loaded
                pass
            time.sleep(0.2)
        yield Live(process, url, port, folder, paths, labels[:IMAGES].tolist(), checkpoint)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def post(url: str, path: Path) -> dict:
    response = httpx.post(f"{url}/predict", files={"image": (path.name, path.read_bytes(), "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.skipif(not REAL, reason=f"no real MNIST in {SHARED_DATA}")
def test_real_images_over_http_are_answered_as_predict_answers_them(live):
    with ThreadPoolExecutor(8) as clients:  # concurrent, so that the server batches them
        answers = list(clients.map(lambda path: post(live.url, path), live.images))
    output = live.folder / "predictions.csv"
    proj.predict.main(
        ["--ckpt_path", str(live.checkpoint), "--input", str(live.folder / "images"), "--output", str(output)]
    )
    _, rows = read_csv(output)
    assert [row["path"] for row in rows] == [str(path) for path in live.images]
    for answer, row in zip(answers, rows, strict=True):
        assert answer["prediction"] == row["prediction"] and answer["class_index"] == int(row["class_index"])
        for name, probability in answer["probabilities"].items():
            assert probability == pytest.approx(float(row[f"p{name}"]), abs=2e-6)  # the CSV's 6 decimals
    correct = sum(int(answer["prediction"]) == label for answer, label in zip(answers, live.labels, strict=True))
    assert correct / IMAGES > 0.8  # a real model on real digits, not noise


def browser_missing() -> str | None:
    """What is missing to drive a headless Chromium, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium (pip install -e '.[dev]')"
    missing = [name for name, path in BROWSER.items() if not Path(path).is_file()]
    return f"{' and '.join(missing)} ({INSTALL_BROWSER})" if missing else None


def test_the_page_classifies_an_uploaded_image_and_a_drawing(live):
    if missing := browser_missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test, but {missing} is not installed")
        pytest.skip(f"no headless browser: install {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER["chromium"]
    profile = tempfile.mkdtemp(prefix="chromium-", dir=live.folder)
    for flag in ["headless", "no-sandbox", "disable-gpu", "disable-quic", "no-first-run", "disable-sync"]:
        options.add_argument(f"--{flag}")
    options.add_argument("--disable-background-networking")
    options.add_argument("--disable-component-update")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=900,800")
    driver = webdriver.Chrome(options=options, service=Service(BROWSER["chromedriver"]))
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(live.url)
        wait.until(lambda d: "classes" in d.find_element(By.ID, "about").text)
        assert "MLPClassifier" in driver.find_element(By.ID, "title").text
        assert driver.find_element(By.ID, "draw").is_displayed()  # a digit model: the drawing pad is offered
        image = next(  # an image the model gets right, as proj.predict answers it
            path
            for path, label in zip(live.images, live.labels, strict=True)
            if post(live.url, path)["prediction"] == str(label)
        )
        driver.find_element(By.ID, "file").send_keys(str(image))  # the page's own form
        top = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
        expected = post(live.url, image)
        assert top[0].get_attribute("data-class") == expected["prediction"]
        assert top[0].find_element(By.CLASS_NAME, "p").text == f"{100 * expected['confidence']:.1f}%"
        assert len(top) == 5 and not driver.find_element(By.ID, "error").text

        driver.find_element(By.ID, "clear").click()
        pad = driver.find_element(By.ID, "pad")
        ActionChains(driver).move_to_element_with_offset(pad, -30, -60).click_and_hold().move_by_offset(
            60, 0
        ).move_by_offset(-30, 120).release().perform()  # a 7
        drawn = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
        assert drawn[0].get_attribute("data-class") in [str(digit) for digit in range(10)]
    finally:
        driver.quit()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_server_and_its_processes(live):
    workers = children(live.process.pid)  # inference worker, HTTP server, multiprocessing manager
    assert len(workers) >= 2
    live.process.send_signal(signal.SIGTERM)
    assert live.process.wait(timeout=60) == 0
    stderr = (live.folder / "stderr").read_text()
    assert "Traceback" not in stderr, stderr
    assert "Stopped." in (live.folder / "stdout").read_text()
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(pid) for pid in workers)
    with socket.socket() as again:  # the port is free again (for a server that binds as uvicorn does)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", live.port))
    assert not (live.folder / "client.py").exists()  # LitServe writes none unless asked
