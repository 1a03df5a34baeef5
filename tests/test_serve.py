"""proj.serve in-process, through LitServe's own test client: the answers of each kind of model (MLP and CNN on
digits, a colour CNN of named classes, and the CNN exported to ONNX) equal proj.predict's on the same files, in
both request forms and the batch form; bad requests get a 4xx with a JSON error and the server goes on; a bad
start is one error line. The real server process and the browser: test_serve_live.py."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from litserve.utils import wrap_litserve_start
from PIL import Image

import proj.export
import proj.serve
from conftest import user_error
from proj.checkpoints import load_classifier
from proj.predict import predict_files
from proj.serve import Decoded, ImageAPI, Model, checkpoint_model, onnx_model
from test_predict import ONE, SEVEN, TINY_MODELS, draw, png_bytes, trained_checkpoint
from test_predict_generic import COLOUR, colour_images, colour_model, save_checkpoint
from test_untrusted_files import EVIL, evil_checkpoint  # noqa: F401 (a fixture)

HEALTHY_WITHIN = 180  # seconds: a worker process imports torch and Lightning on a shared 2-core machine
LIMITS = {"max_body_mb": 0.5, "max_images": 4}  # small, so that the tests can go past them


@pytest.fixture(scope="module")
def checkpoints(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MLP and CNN fitted by the CLI on digits (seconds), and a colour CNN of the classes cat, dog and owl."""
    found = {name: trained_checkpoint(mnist_dir, tmp_path_factory, name) for name in TINY_MODELS}
    found["colour"] = save_checkpoint(colour_model(), tmp_path_factory.mktemp("serve") / "colour.ckpt", COLOUR)
    return found


@contextmanager
def serving(model: Model, **options: Any) -> Iterator[TestClient]:
    """The server of `model` running in this process (its inference worker in a child), once /health says so."""
    litserver = proj.serve.server(model, **options)
    with wrap_litserve_start(litserver) as running, TestClient(running.app) as client:
        deadline = time.monotonic() + HEALTHY_WITHIN
        while (health := client.get("/health")).status_code != 200:
            assert health.status_code == 503 and time.monotonic() < deadline, health.text
            time.sleep(0.1)
        yield client


@pytest.fixture(scope="module")
def mlp_client(checkpoints: dict[str, Path]) -> Iterator[TestClient]:
    """The digit MLP's server with small limits, shared by the tests of the answers and of bad requests."""
    with serving(checkpoint_model(str(checkpoints["mlp"])), max_batch_size=8, **LIMITS) as client:
        yield client


def digit_files(folder: Path) -> list[Path]:
    """Digits as users send them: dark on white RGB PNG, a JPEG photo-like one, a white-on-black BMP."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "seven.png", folder / "one.jpg", folder / "small.bmp"]
    draw((100, 80), (20, 10, 60), ink=(0, 0, 0), paper=(255, 255, 255), mode="RGB").save(paths[0])
    draw((300, 400), (60, 90, 200), ink=(30, 30, 40), paper=(220, 215, 200), mode="RGB", points=ONE).save(paths[1])
    draw((40, 40), (8, 6, 26), points=SEVEN).save(paths[2])
    return paths


def as_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def check_answer(answer: dict[str, Any], row: dict[str, Any], names: list[str]) -> None:
    """An answer of the server is proj.predict's row for the same file (probabilities to float rounding)."""
    assert set(answer) == {"prediction", "class_index", "confidence", "probabilities"}
    assert (answer["prediction"], answer["class_index"]) == (row["prediction"], row["class_index"])
    assert list(answer["probabilities"]) == names  # by class name, in the model's order
    expected = torch.tensor([row[f"p{name}"] for name in names])
    torch.testing.assert_close(torch.tensor(list(answer["probabilities"].values())), expected, atol=1e-5, rtol=0)
    assert answer["confidence"] == pytest.approx(row["confidence"], abs=1e-5)


def check_serves_as_predict(client: TestClient, checkpoint: Path, paths: list[Path]) -> None:
    """Each file alone as an upload and as JSON base64, then all as one batch in each form: proj.predict's answers."""
    rows = predict_files(load_classifier(checkpoint), paths, device="cpu")
    names = client.get("/info").json()["model"]["class_names"]
    for path, row in zip(paths, rows, strict=True):
        upload = client.post("/predict", files={"image": (path.name, path.read_bytes(), "application/octet-stream")})
        assert upload.status_code == 200, upload.text
        check_answer(upload.json(), row, names)
        posted = client.post("/predict", json={"image": as_base64(path)})
        assert posted.status_code == 200, posted.text
        check_answer(posted.json(), row, names)
    uploads = [("images", (path.name, path.read_bytes(), "image/png")) for path in paths]
    for batch in (
        client.post("/predict", files=uploads),
        client.post("/predict", json={"images": [as_base64(p) for p in paths]}),
    ):
        assert batch.status_code == 200, batch.text
        assert len(batch.json()["predictions"]) == len(paths)
        for answer, row in zip(batch.json()["predictions"], rows, strict=True):  # in order
            check_answer(answer, row, names)


def test_mlp_answers_as_predict_and_describes_itself(mlp_client, checkpoints, tmp_path):
    check_serves_as_predict(mlp_client, checkpoints["mlp"], digit_files(tmp_path))
    info = mlp_client.get("/info").json()["model"]
    assert info["model_class"] == "proj.models.mlp.MLPClassifier" and info["runtime"] == "pytorch"
    assert info["checkpoint"] == str(checkpoints["mlp"].resolve())
    stored = torch.load(checkpoints["mlp"], weights_only=True)
    assert info["epoch"] == stored["epoch"]
    assert info["input_shape"] == [1, 28, 28] and info["class_names"] == [str(digit) for digit in range(10)]
    assert info["data"]["digits"] is True and info["data"]["mean"] == pytest.approx([0.1307])
    assert info["max_images"] == LIMITS["max_images"]
    page = mlp_client.get("/")
    assert page.status_code == 200 and page.headers.get("content-type", "").startswith("text/html")
    assert '<form id="upload" action="/predict"' in page.text and 'name="image" type="file"' in page.text


@pytest.mark.parametrize("kind", ["cnn", "colour"])
def test_cnn_and_colour_models_answer_as_predict(checkpoints, tmp_path, kind):
    paths = digit_files(tmp_path) if kind == "cnn" else colour_images(tmp_path)[:-1]  # the last one is broken
    if kind == "colour":
        Image.new("RGB", (1, 1), (200, 30, 30)).save(tmp_path / "one-pixel.png")  # resized, as predict does
        paths.append(tmp_path / "one-pixel.png")
    with serving(checkpoint_model(str(checkpoints[kind])), max_batch_size=4) as client:
        check_serves_as_predict(client, checkpoints[kind], paths)
        info = client.get("/info").json()["model"]
        assert info["class_names"] == (COLOUR["class_names"] if kind == "colour" else [str(d) for d in range(10)])
        assert info["preprocess"] == ("resize" if kind == "colour" else "digit")


@pytest.mark.slow  # the export takes seconds
def test_onnx_answers_as_the_checkpoint(checkpoints, tmp_path):
    onnx_file = tmp_path / "cnn.onnx"
    proj.export.main(["--ckpt_path", str(checkpoints["cnn"]), "--format", "onnx", "--output", str(onnx_file)])
    with serving(onnx_model(str(onnx_file))) as client:
        check_serves_as_predict(client, checkpoints["cnn"], digit_files(tmp_path / "in"))
        info = client.get("/info").json()["model"]
        assert info["runtime"] == "onnxruntime" and info["onnx"] == str(onnx_file.resolve())
        assert info["model_class"] == "proj.models.cnn.CNNClassifier" and info["input_shape"] == [1, 28, 28]


def png(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format)
    return buffer.getvalue()


SEVEN_PNG = png_bytes(draw((100, 80), (20, 10, 60), ink=0, paper=255))
JPEG = png(draw((100, 80), (20, 10, 60), ink=0, paper=255), "JPEG")
HUGE = png(Image.new("1", (10_000, 10_000), 1))  # 100 megapixels in a few kilobytes
UPLOAD = {"files": {"image": ("seven.png", SEVEN_PNG, "image/png")}}
BAD_REQUESTS: dict[str, tuple[dict[str, Any], int, str]] = {  # request, status, what the error says
    "not an image": ({"files": {"image": ("notes.png", b"just some text", "image/png")}}, 422, "not an image"),
    "empty body": ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "body is empty"),
    "empty file": ({"files": {"image": ("empty.png", b"", "image/png")}}, 400, "is empty (0 bytes)"),
    "truncated PNG": ({"files": {"image": ("cut.png", SEVEN_PNG[:200], "image/png")}}, 422, "truncated"),
    "truncated JPEG": ({"json": {"image": base64.b64encode(JPEG[: len(JPEG) // 2]).decode()}}, 422, "truncated"),
    "1x1 digit": ({"files": {"image": ("dot.png", png(Image.new("L", (1, 1))), "image/png")}}, 422, "no digit"),
    "10,000x10,000": ({"files": {"image": ("huge.png", HUGE, "image/png")}}, 413, "10000x10000 pixels, over"),
    "body over the limit": ({"files": {"image": ("big.png", b"0" * 600_000, "image/png")}}, 413, "--max_body_mb"),
    "bad base64": ({"json": {"image": "this is not base64!"}}, 400, "not valid base64"),
    "bad JSON": ({"content": b'{"image": ', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    "wrong content type": ({"content": SEVEN_PNG, "headers": {"content-type": "image/png"}}, 415, "'image/png'"),
    "no image field": ({"json": {"picture": "aGVsbG8="}}, 400, "neither 'image' nor 'images'"),
    "a form, not multipart": ({"data": {"image": "seven.png"}}, 415, "x-www-form-urlencoded"),
    "text, not a file": (
        {"data": {"image": "seven.png"}, "files": {"x": ("x", b"1")}},
        400,
        "a text field, not a file",
    ),
    "batch over the limit": ({"json": {"images": [base64.b64encode(SEVEN_PNG).decode()] * 5}}, 413, "limit of 4"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_a_4xx_saying_what_to_do(mlp_client, case):
    request, status, says = BAD_REQUESTS[case]
    response = mlp_client.post("/predict", **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error
    assert set(response.json()) == {"error"}


def test_after_a_burst_of_bad_requests_the_server_still_answers(mlp_client, checkpoints):
    expected = mlp_client.post("/predict", **UPLOAD).json()
    for request, status, _ in [*BAD_REQUESTS.values()] * 2:
        assert mlp_client.post("/predict", **request).status_code == status
    assert mlp_client.get("/health").status_code == 200
    assert mlp_client.post("/predict", **UPLOAD).json() == expected
    assert mlp_client.get("/nowhere").json() == {"error": "Not Found"}  # FastAPI's own errors take the same form


def test_a_bad_request_batched_with_good_ones_fails_alone(checkpoints):
    """Several clients' requests in one forward pass: a refused one gets its own error, the others their answers
    (LitServe fails a whole batch when its code raises)."""
    model = checkpoint_model(str(checkpoints["mlp"]))
    api = ImageAPI(model, max_images=4, max_batch_size=4)
    api.setup("cpu")
    good = base64.b64encode(SEVEN_PNG).decode()
    requests = [{"image": good}, {"image": "!!"}, {"images": [good, good]}, {"image": base64.b64encode(b"x").decode()}]
    decoded = [api.decode_request(request) for request in requests]
    assert [item.refused is None for item in decoded] == [True, False, True, False]
    responses = [api.encode_response(item) for item in api.predict(decoded)]
    assert [response.status_code for response in responses] == [200, 400, 200, 422]
    alone = api.encode_response(api.predict(api.decode_request({"image": good})))  # max_batch_size 1: not a list
    first, single = json.loads(responses[0].body), json.loads(alone.body)
    assert first["prediction"] == single["prediction"]
    assert first["confidence"] == pytest.approx(single["confidence"], abs=1e-6)
    assert isinstance(decoded[2], Decoded) and len(decoded[2].answers) == 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bad_starts_are_one_error_line(checkpoints, tmp_path, capsys, evil_checkpoint):  # noqa: F811
    ckpt = str(checkpoints["mlp"])
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(checkpoints["mlp"].read_bytes()[:1000])
    (tmp_path / "broken.onnx").write_bytes(b"not a model")

    def error(*args: str) -> str:
        err = user_error(capsys, proj.serve.main, *args)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err

    assert "does not exist" in error("--ckpt_path", str(tmp_path / "missing.ckpt"))
    assert "cannot be read" in error("--ckpt_path", str(corrupt))
    err = error("--ckpt_path", str(evil_checkpoint))
    assert EVIL in err and f"--model {EVIL}" in err
    assert "either --ckpt_path" in error()
    assert "either --ckpt_path" in error("--ckpt_path", ckpt, "--onnx", "model.onnx")
    assert "cannot be loaded by ONNX Runtime" in error("--onnx", str(tmp_path / "broken.onnx"))
    assert "--max_batch_size must be at least 1" in error("--ckpt_path", ckpt, "--max_batch_size", "0")
    assert "--port 80: use a port from 1024" in error("--ckpt_path", ckpt, "--port", "80")
    assert "--host" in error("--ckpt_path", ckpt, "--host", "example.com")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = error("--ckpt_path", ckpt, "--port", str(port))
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pass another --port" in err
