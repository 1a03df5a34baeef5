"""proj.serve_bench's parts, quickly: the plain baseline server answers as proj.serve does, the load generator counts
what it measures, and the memory of a process tree is summed over its processes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from proj.serve_bench import load, memory_mb, plain_server, process_tree, request_bodies
from test_serve import SEVEN_PNG, checkpoints, free_port  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def plain(checkpoints: dict[str, Path]) -> str:  # noqa: F811
    """The baseline server of the digit MLP, in a thread of this process: its /predict URL."""
    port = free_port()
    server = plain_server(str(checkpoints["mlp"]), port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/predict"
    server.shutdown()


def test_the_plain_server_answers_as_proj_serve(plain, checkpoints):  # noqa: F811
    from proj.serve import ImageAPI, checkpoint_model

    api = ImageAPI(checkpoint_model(str(checkpoints["mlp"])), max_batch_size=1)
    api.setup("cpu")
    request = {"image": base64.b64encode(SEVEN_PNG).decode()}
    expected = json.loads(api.encode_response(api.predict(api.decode_request(request))).body)
    answer = httpx.post(plain, json=request).json()
    assert answer["prediction"] == expected["prediction"]
    assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)


def test_load_counts_the_requests_of_its_window(plain, mnist_dir):
    bodies = request_bodies(mnist_dir, count=8)
    assert len(bodies) == 8 and "image" in json.loads(bodies[0])
    figures = asyncio.run(load(plain, bodies, clients=4, seconds=1.0, warmup=0.2))
    assert figures["clients"] == 4 and figures["errors"] == 0 and figures["requests"] > 4
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert figures["requests_per_s"] == pytest.approx(figures["requests"] / 1.0, rel=0.5)  # over about a second
    broken = asyncio.run(load(plain.replace("/predict", "/nowhere"), bodies, clients=1, seconds=0.3, warmup=0))
    assert broken["errors"] == broken["requests"] > 0  # every answer a 404


def test_memory_sums_a_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time; data = bytearray(200 * 2**20); time.sleep(30)"])
    try:
        deadline = 200
        while memory_mb(child.pid) < 150 and deadline:  # until the child holds its 200 MB
            deadline -= 1
            threading.Event().wait(0.05)
        assert child.pid in process_tree(os.getpid())
        assert memory_mb(os.getpid()) >= memory_mb(child.pid) + 150 > 300
    finally:
        child.kill()
        child.wait()
