"""`python -m proj.serve --ckpt_path CKPT` (or `--onnx FILE`): a trained model over HTTP, served by LitServe.

- POST /predict: one image, as a multipart file upload in the field `image` (`curl -F image=@digit.png`) or as JSON
  `{"image": "<base64>"}`; several in one request as the field `images` (repeated) or `{"images": [...]}`. Each is
  prepared as `proj.predict` prepares a file for that model (proj.data.images.prepare with the data description the
  checkpoint holds). The answer: `{"prediction": class name, "class_index", "confidence", "probabilities": {class
  name: probability}}`; for `images`, `{"predictions": [one such answer per image, in order]}`.
- GET /health: 200 once the model is loaded (until then the server does not listen, or answers 503).
- GET /info: the model (class, data description, input shape, class names, checkpoint, its epoch and val accuracy)
  and the server's settings.
- GET /: a page to try the model in a browser (drop or pick an image; draw a digit for digit models).

Requests of concurrent clients are batched: one forward pass takes up to --max_batch_size requests, waiting at most
--batch_timeout seconds for them (--max_batch_size 1: one request at a time). --onnx serves a file written by
`python -m proj.export --format onnx` through ONNX Runtime, with the same requests and answers.

A bad request gets a 4xx answer `{"error": "..."}` that says what to send instead, and the server goes on: 415 for a
content type other than multipart/form-data or JSON, 413 for a body over --max_body_mb, more than --max_images
images, or an image over 40 megapixels (refused before it is decoded), 400 for an empty body, JSON that does not
parse, a missing field or base64 that does not decode, 422 for a file that is no image (or a truncated one) or a
blank digit. Images of any other size are resized as proj.predict resizes them (a 1x1 image too).
"""

import base64
import io
import json
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import litserve as ls
import torch
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor

from proj.checkpoints import read_checkpoint
from proj.commands import run_command
from proj.data.images import prepare, resolve_preprocess
from proj.errors import UserError
from proj.export import INPUT, OUTPUT, stored_description
from proj.predict import answers, load_checkpoint

Host = Literal["127.0.0.1", "0.0.0.0", "::"]  # the hosts LitServer.run accepts
Accelerator = Literal["auto", "cpu", "cuda", "mps"]
MAX_PIXELS = 40_000_000  # an image over this is refused before decoding: a small PNG can unpack to gigabytes
FORM, JSON = "multipart/form-data", "application/json"
HOW_TO_SEND = (
    "send the file as multipart/form-data in the field 'image' (curl -F image=@digit.png), or JSON "
    '{"image": "<base64 of the file>"}; several images: the field \'images\' (repeated) or {"images": [...]}'
)
PAGE = files("proj").joinpath("serve_page.html")


class Refused(Exception):
    """A request answered with an HTTP error `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> JSONResponse:
        return JSONResponse({"error": str(self)}, status_code=self.status)


class Upload(io.BytesIO):
    """An uploaded image's bytes, named in error messages ("image 2 of 3")."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __repr__(self) -> str:
        return self.name


@dataclass
class Model:
    """What to serve, read and checked at start in the server's process; each inference worker then `load`s it.

    `trusted`: the model classes outside proj that the checkpoint may name (--model). `info`: what /info says.
    """

    runtime: Literal["pytorch", "onnxruntime"]
    path: str
    description: dict[str, Any]
    trusted: Sequence[str] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def load(self, device: str) -> Callable[[Tensor], Tensor]:
        """The model's forward pass on `device`: a batch of prepared images (B, C, H, W) to logits (B, classes)."""
        if self.runtime == "onnxruntime":
            import onnxruntime

            providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else []
            session = onnxruntime.InferenceSession(self.path, providers=[*providers, "CPUExecutionProvider"])
            return lambda images: torch.from_numpy(session.run([OUTPUT], {INPUT: images.numpy()})[0])
        network, _ = load_checkpoint(self.path, None, trusted=self.trusted)
        network = network.to(device).eval()

        def forward(images: Tensor) -> Tensor:
            with torch.inference_mode():
                return network(images.to(device))

        return forward


def checkpoint_model(ckpt_path: str, trusted: Sequence[str] = ()) -> Model:
    """A checkpoint of proj.fit to serve, checked (readable, a trusted class, its data described); /info gives its
    class, data, epoch and the validation accuracy it was saved with."""
    network, description = load_checkpoint(ckpt_path, None, trusted=trusted)
    checkpoint = read_checkpoint(ckpt_path)
    scores = [
        float(state["current_score"])
        for state in checkpoint.get("callbacks", {}).values()
        if state.get("monitor") == "val/acc" and state.get("current_score") is not None
    ]
    info = {
        "model_class": f"{type(network).__module__}.{type(network).__qualname__}",
        "runtime": "pytorch",
        "checkpoint": str(Path(ckpt_path).resolve()),
        "epoch": checkpoint.get("epoch"),
        "val_acc": scores[0] if scores else None,
    }
    return Model("pytorch", ckpt_path, description, trusted, info)


def onnx_model(path: str) -> Model:
    """An ONNX file of proj.export to serve; its data description comes from the file's metadata."""
    if find_spec("onnxruntime") is None:
        raise UserError("--onnx needs ONNX Runtime: pip install 'proj[export]'")
    import onnxruntime

    if not Path(path).is_file():
        raise UserError(f"--onnx {path!r} does not exist: export one with python -m proj.export --format onnx")
    try:
        properties = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail...) for a damaged file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--onnx {path!r} cannot be loaded by ONNX Runtime ({reason}): export it again") from err
    metadata = properties.custom_metadata_map
    description = stored_description(metadata, f"ONNX file {path!r}")
    info = {"model_class": metadata.get("proj.model"), "runtime": "onnxruntime", "onnx": str(Path(path).resolve())}
    return Model("onnxruntime", path, description, (), info)


def image_contents(payload: Any, max_images: int) -> tuple[list[tuple[str, bytes]], bool]:
    """The image files a request sends (multipart uploads, or base64 in JSON), each with its name for messages, and
    whether it sent a list of them (`images`) rather than one (`image`)."""
    if isinstance(payload, FormData):
        found = {key: payload.getlist(key) for key in ("image", "images")}
    elif isinstance(payload, dict):
        images = payload.get("images", [])
        if not isinstance(images, list):
            raise Refused(400, f"'images' must be a list of base64 strings: {HOW_TO_SEND}")
        found = {"image": [payload["image"]] if "image" in payload else [], "images": images}
    else:
        raise Refused(400, f"the JSON body is {type(payload).__name__}, not an object: {HOW_TO_SEND}")
    if bool(found["image"]) == bool(found["images"]):
        which = "both 'image' and 'images'" if found["image"] else "neither 'image' nor 'images'"
        raise Refused(400, f"the request holds {which}: {HOW_TO_SEND}")
    many = bool(found["images"])
    values = found["images"] if many else found["image"]
    if not many and len(values) > 1:
        raise Refused(400, f"{len(values)} fields 'image': send one, or several in the field 'images'")
    if len(values) > max_images:
        raise Refused(413, f"{len(values)} images in one request, over the limit of {max_images}: send fewer at a time")
    names = [f"image {index + 1} of {len(values)}" if many else "the image" for index in range(len(values))]
    form = isinstance(payload, FormData)
    return [(name, content(value, name, form)) for name, value in zip(names, values, strict=True)], many


def content(value: Any, name: str, form: bool) -> bytes:
    """A file's bytes: an uploaded file's, or a JSON string's decoded from base64 (a data: URL's too)."""
    if isinstance(value, UploadFile):
        return value.file.read()
    if form:
        raise Refused(400, f"{name} is a text field, not a file: {HOW_TO_SEND}")
    if not isinstance(value, str):
        raise Refused(400, f"{name} is a JSON {type(value).__name__}, not a base64 string: {HOW_TO_SEND}")
    if value.startswith("data:"):  # what a browser's FileReader gives: data:image/png;base64,...
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as err:  # binascii.Error, or a non-ASCII character
        raise Refused(400, f"{name} is not valid base64 ({err}): send base64.b64encode(the file's bytes)") from err


def checked_upload(data: bytes, name: str) -> Upload:
    """The bytes as a file to prepare, after reading only its header: an image Pillow reads, of at most MAX_PIXELS."""
    if not data:
        raise Refused(400, f"{name} is empty (0 bytes): {HOW_TO_SEND}")
    upload = Upload(data, name)
    too_large = f"over the limit of {MAX_PIXELS // 10**6} megapixels: send it reduced"
    try:
        with Image.open(upload) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:  # Pillow's own limit, far above ours
        raise Refused(413, f"{name} has more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, {too_large}") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise Refused(
            422, f"{name} is not an image Pillow can read ({type(err).__name__}): send a PNG, JPEG or BMP file"
        ) from err
    if width * height > MAX_PIXELS:
        raise Refused(413, f"{name} is {width}x{height} pixels, {too_large}")
    upload.seek(0)
    return upload


@dataclass
class Decoded:
    """One request in the inference worker: its prepared images, or why it is refused, and then its answers."""

    images: list[Tensor]
    many: bool = False
    refused: Refused | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)


class ImageAPI(ls.LitAPI):
    """The model behind POST /predict. A refused request is answered on its own: in a batch of several clients'
    requests, one bad image must not fail the others (LitServe fails a whole batch on an exception), so decoding
    never raises and each request carries its refusal to `encode_response`."""

    def __init__(self, model: Model, max_images: int = 64, max_batch_size: int = 16, batch_timeout: float = 0.01):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model, self.max_images = model, max_images

    def setup(self, device: str) -> None:
        self.forward = self.model.load(device)

    # `request` unannotated: LitServe would take an annotation for the type FastAPI parses the body into.
    def decode_request(self, request) -> Decoded:  # type: ignore[no-untyped-def]
        try:
            contents, many = image_contents(request, self.max_images)
            uploads = [checked_upload(data, name) for name, data in contents]
            try:
                return Decoded([prepare(upload, self.model.description) for upload in uploads], many)
            except UserError as err:
                raise Refused(422, str(err)) from err
        except Refused as refused:
            return Decoded([], refused=refused)

    def predict(self, x: Decoded | list[Decoded]) -> Decoded | list[Decoded]:
        """One forward pass over every image of the requests (a list of them when batching)."""
        requests = x if isinstance(x, list) else [x]
        images = [image for request in requests for image in request.images]
        if images:
            found = iter(answers(self.forward(torch.stack(images)), self.model.description["class_names"]))
            for request in requests:
                request.answers = [next(found) for _ in request.images]
        return x

    def encode_response(self, output: Decoded) -> JSONResponse:
        """The answer, or the refusal with its status. LitServe takes this annotation for the endpoint's: a
        Response, so that FastAPI passes it on as it is (no module imports annotations from __future__ here)."""
        if output.refused is not None:
            return output.refused.response()
        return JSONResponse({"predictions": output.answers} if output.many else output.answers[0])


class RequestCheck:
    """ASGI middleware before LitServe's POST /predict: refuses what LitServe would answer with a 500 (another
    content type, JSON that does not parse) or read whole into memory (a body over `max_bytes`: 413, at once when
    Content-Length says so), and an empty body."""

    def __init__(self, app: ASGIApp, path: str, max_bytes: int) -> None:
        self.app, self.path, self.max_bytes = app, path, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        try:
            body = await self.body(scope, receive)
        except Refused as refused:
            await refused.response()(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def body(self, scope: Scope, receive: Receive) -> bytes:
        headers = Headers(scope=scope)
        kind = headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind not in (FORM, JSON):
            raise Refused(415, f"content type {kind or 'none'!r} is not accepted: {HOW_TO_SEND}")
        limit = (
            f"over the limit of {self.max_bytes:,} bytes: send a smaller file (or serve with a larger --max_body_mb)"
        )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise Refused(413, f"the request body is {int(declared):,} bytes, {limit}")
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                raise Refused(413, f"the request body is over {self.max_bytes:,} bytes, {limit}")
            if not message.get("more_body", False):
                break
        if not body:
            raise Refused(400, f"the request body is empty: {HOW_TO_SEND}")
        if kind == JSON:
            try:
                json.loads(body)
            except ValueError as err:
                raise Refused(400, f"the body is not valid JSON ({err}): {HOW_TO_SEND}") from err
        return bytes(body)


async def http_error(request: Request, error: Exception) -> JSONResponse:
    """Every HTTP error (LitServe's and FastAPI's, 404 too) as `{"error": ...}`, as the API's own refusals."""
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


def server(
    model: Model,
    max_batch_size: int = 16,
    batch_timeout: float = 0.01,
    workers: int = 1,
    accelerator: Accelerator = "auto",
    max_body_mb: float = 16.0,
    max_images: int = 64,
) -> ls.LitServer:
    """The LitServer of `model`, with the request checks, JSON errors and the page at "/"; not started."""
    max_bytes = int(max_body_mb * 2**20)  # LitServe compares max_payload_size with a byte count
    api = ImageAPI(model, max_images, max_batch_size, batch_timeout)
    info = {**model.info, **{key: model.description[key] for key in ("input_shape", "class_names")}}
    info |= {"data": model.description, "preprocess": resolve_preprocess("auto", model.description)}
    info |= {"max_images": max_images, "max_pixels": MAX_PIXELS}
    served = ls.LitServer(
        api, accelerator=accelerator, workers_per_device=workers, max_payload_size=max_bytes, model_metadata=info
    )
    app = served.app
    app.add_middleware(RequestCheck, path=api.api_path, max_bytes=max_bytes)
    app.add_exception_handler(HTTPException, http_error)
    page = PAGE.read_text(encoding="utf-8")
    app.router.routes[:] = [route for route in app.router.routes if getattr(route, "path", None) != "/"]  # LitServe's
    app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    return served


def check_port(host: str, port: int) -> None:
    """Fail before anything starts if the port cannot be listened on (uvicorn would exit 1 with a log line)."""
    if not 1024 <= port <= 65535:
        raise UserError(f"--port {port}: use a port from 1024 to 65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(
                f"cannot listen on {host}:{port} ({err.strerror}): stop what uses that port, or pass another --port"
            ) from err


def check_accelerator(accelerator: Accelerator) -> None:
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise UserError("--accelerator cuda: no CUDA GPU is available here; use --accelerator cpu (or auto)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError("--accelerator mps: no Apple GPU is available here; use --accelerator cpu (or auto)")


def stop_on_sigterm() -> None:
    """SIGTERM (docker stop, systemd, kill) stops the server as Ctrl-C does: LitServe shuts its processes down on a
    KeyboardInterrupt. The processes LitServe forks from this one (its HTTP servers) keep the default: the signal
    ends them (uvicorn sends it again to itself once it has closed its connections)."""
    server = os.getpid()

    def stop(signum: int, frame: FrameType | None) -> None:
        if os.getpid() == server:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, stop)


def run(
    ckpt_path: str | None = None,
    onnx: str | None = None,
    port: int = 8000,
    host: Host = "127.0.0.1",
    max_batch_size: int = 16,
    batch_timeout: float = 0.01,
    workers: int = 1,
    accelerator: Accelerator = "auto",
    max_body_mb: float = 16.0,
    max_images: int = 64,
    model: Sequence[str] = (),
) -> None:
    """Serve a trained model over HTTP until Ctrl-C or SIGTERM; its parameters are the command's flags.

    Args:
        ckpt_path: checkpoint written by proj.fit (a .ckpt file)
        onnx: instead of a checkpoint, a file written by `python -m proj.export --format onnx`, run by ONNX Runtime
        port: TCP port to listen on
        host: 127.0.0.1 (this machine only), 0.0.0.0 or :: (every interface: reachable from the network)
        max_batch_size: most requests in one forward pass (dynamic batching); 1: one request at a time
        batch_timeout: most seconds a request waits for others to fill a batch
        workers: inference processes per device, each holding the model
        accelerator: auto (a GPU if there is one), cpu, cuda or mps
        max_body_mb: the largest request body accepted, in MiB (larger ones get 413)
        max_images: the most images in one request (the `images` form)
        model: a model class outside proj that the checkpoint may name (e.g. mypackage.models.MyClassifier):
            importing a class runs its package's code, so only proj's own are loaded unless named here; may be
            repeated
    """
    if (ckpt_path is None) == (onnx is None):
        raise UserError("pass either --ckpt_path CKPT (a checkpoint of proj.fit) or --onnx FILE (of proj.export)")
    for flag, value in {"max_batch_size": max_batch_size, "workers": workers, "max_images": max_images}.items():
        if value < 1:
            raise UserError(f"--{flag} must be at least 1, got {value}")
    if batch_timeout < 0 or max_body_mb <= 0:
        raise UserError(f"--batch_timeout must be >= 0 and --max_body_mb > 0, got {batch_timeout} and {max_body_mb}")
    check_accelerator(accelerator)
    served = checkpoint_model(ckpt_path, model) if ckpt_path is not None else onnx_model(str(onnx))
    check_port(host, port)
    litserver = server(served, max_batch_size, batch_timeout, workers, accelerator, max_body_mb, max_images)
    what = served.info["model_class"] or "the model"
    print(f"Serving {what} ({served.runtime}) at http://{host}:{port}/ (POST /predict), ready when GET /health is 200")
    stop_on_sigterm()
    litserver.run(host=host, port=port, generate_client_file=False, log_level="warning")
    print("Stopped.")


def main(args: Sequence[str] | None = None) -> None:
    """Run from the command line; a problem the user can fix exits with its message and status 2."""
    run_command(run, args, "python -m proj.serve", __doc__)


if __name__ == "__main__":
    main()
