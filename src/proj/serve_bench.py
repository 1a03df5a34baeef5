"""`python -m proj.serve_bench` (`make bench-serve`): proj.serve under load, on loopback, against a plain server.

For the CNN and the MLP of configs/cnn.yaml and configs/mlp.yaml (fitted for `--train_batches` batches on
`--data_dir`: real MNIST when it is there, else synthetic digits), each of these servers is started as its own
process on 127.0.0.1:

  plain           the simplest server a user would write: Python's http.server, one request at a time, PyTorch
  serve           proj.serve --max_batch_size 1: LitServe, no batching, PyTorch
  serve_batched   proj.serve --max_batch_size 16 --batch_timeout 0.01: dynamic batching, PyTorch
  onnx            proj.serve --onnx (the model exported by proj.export), no batching, ONNX Runtime
  onnx_batched    the same with dynamic batching

and loaded by 1, 8 and 32 concurrent clients (`--clients`). Each client posts a real test image (JSON base64, the
form every server takes) and waits for the answer before sending the next; after `--warmup` seconds, the answers
of the next `--seconds` are counted: requests per second, and the 50th and 99th percentile latency. Per server:
the seconds from its start to its first answer, and the memory of all its processes (PSS, which counts pages
shared between them once) after the load. The clients run on the same CPUs as the server (one process, aiohttp).
"""

import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Literal, get_args

import aiohttp
import torch
from PIL import Image

import proj.export
import proj.fit
from proj.commands import run_command
from proj.data import MNISTDataModule
from proj.data.images import prepare
from proj.data.synthetic import write_synthetic_mnist
from proj.predict import answers, load_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
Model = Literal["cnn", "mlp"]
Server = Literal["plain", "serve", "serve_batched", "onnx", "onnx_batched"]
SERVERS: tuple[Server, ...] = get_args(Server)
BATCHING = ["--max_batch_size", "16", "--batch_timeout", "0.01"]  # proj.serve's defaults, written out
FLAGS: dict[Server, list[str]] = {
    "serve": ["--max_batch_size", "1"],
    "serve_batched": BATCHING,
    "onnx": ["--max_batch_size", "1"],
    "onnx_batched": BATCHING,
}
IMAGES = 256  # distinct test images the clients cycle through


def plain_server(ckpt_path: str, port: int) -> HTTPServer:
    """The baseline: the model behind Python's http.server, one request at a time, prepared as proj.serve
    prepares it, the same answer. Its listen backlog is raised from 5 to 64, so that 32 clients connecting at once
    measure the server rather than the kernel's SYN retries."""
    network, description = load_checkpoint(ckpt_path, None, ())
    names = description["class_names"]

    class Predict(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.reply(b"ok", "text/plain")

        def do_POST(self) -> None:
            if self.path != "/predict":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            image = prepare(io.BytesIO(base64.b64decode(body["image"])), description)
            with torch.inference_mode():
                answer = answers(network(image[None]), names)[0]
            self.reply(json.dumps(answer).encode(), "application/json")

        def reply(self, data: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    HTTPServer.request_queue_size = 64
    return HTTPServer(("127.0.0.1", port), Predict)


def serve_plainly(ckpt_path: str, port: int) -> None:
    """Run the baseline until killed (the bench starts it as a process of its own)."""
    plain_server(ckpt_path, port).serve_forever()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(server: Server, model_file: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    """The server as a process of its own (its output discarded), its processes computing with `threads` threads."""
    if server == "plain":
        command = ["-c", f"from proj.serve_bench import serve_plainly; serve_plainly({str(model_file)!r}, {port})"]
    else:
        source = "--onnx" if server.startswith("onnx") else "--ckpt_path"
        command = ["-m", "proj.serve", source, str(model_file), "--port", str(port), *FLAGS[server]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # read by torch and ONNX Runtime alike
    return subprocess.Popen([sys.executable, *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


async def first_answer(url: str, body: bytes, process: subprocess.Popen[bytes], limit: float = 300) -> None:
    """Wait until the server answers a prediction (it does not listen before its model is loaded)."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server (exit status {process.poll()}) gave no answer in {limit:.0f} s")
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def load(url: str, bodies: Sequence[bytes], clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    """`clients` concurrent clients, each posting the next body as soon as it has its answer: requests/s and the
    p50/p99 latency of the requests sent between `warmup` and `warmup + seconds`; answers other than 200 and broken
    connections count as errors."""
    latencies: list[float] = []
    errors = 0
    begin = time.perf_counter()
    counted, end = begin + warmup, begin + warmup + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client(index: int) -> None:
            nonlocal errors
            while (sent := time.perf_counter()) < end:
                body = bodies[index % len(bodies)]
                index += clients
                try:
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as answer:
                        await answer.read()
                        ok = answer.status == 200
                except aiohttp.ClientError:
                    ok = False
                if sent >= counted:
                    latencies.append(time.perf_counter() - sent)
                    errors += not ok

        await asyncio.gather(*(client(index) for index in range(clients)))
    window = max(time.perf_counter(), end) - counted
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / window,
        "p50_ms": 1000 * cuts[49],
        "p99_ms": 1000 * cuts[98],
        "errors": errors,
    }


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(parent, []).append(int(stat.parent.name))
    tree, queue = [], [pid]
    while queue:
        tree.append(current := queue.pop())
        queue += parents.get(current, [])
    return tree


def memory_mb(pid: int) -> float:
    """The proportional set size (PSS: shared pages split between their processes) of `pid` and its descendants."""
    total = 0
    for process in process_tree(pid):
        try:
            rollup = Path(f"/proc/{process}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return total / 1024


def request_bodies(data_dir: Path, count: int = IMAGES) -> list[bytes]:
    """The first `count` test images as JSON request bodies (PNG files, base64)."""
    test = MNISTDataModule(data_dir, download=False).read_split("test")
    assert test is not None, "MNIST has a test split"
    bodies = []
    images = test[0]
    for image in images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image[0].numpy()).save(buffer, "PNG")
        bodies.append(json.dumps({"image": base64.b64encode(buffer.getvalue()).decode()}).encode())
    return bodies


def fitted(model: Model, data_dir: Path, logs: Path, batches: int) -> tuple[Path, Path]:
    """configs/<model>.yaml fitted for `batches` batches (the timing needs the architecture, not the accuracy), and
    its ONNX export."""
    flags = ["--config", str(CONFIGS / f"{model}.yaml"), "--data.data_dir", str(data_dir), "--data.val_size", "500"]
    flags += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(batches)]
    flags += ["--trainer.limit_val_batches", "2", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false"]
    proj.fit.main([*flags, "--trainer.logger.init_args.save_dir", str(logs / model), "--test_after_fit", "false"])
    checkpoint = next((logs / model).rglob("last.ckpt"))
    exported = logs / f"{model}.onnx"
    proj.export.main(["--ckpt_path", str(checkpoint), "--format", "onnx", "--output", str(exported)])
    return checkpoint, exported


async def measure(
    server: Server,
    model_file: Path,
    bodies: Sequence[bytes],
    clients: Sequence[int],
    seconds: float,
    warmup: float,
    threads: int,
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/predict"
    began = time.perf_counter()
    process = start(server, model_file, port, threads)
    try:
        await first_answer(url, bodies[0], process)
        ready = time.perf_counter() - began
        points = [await load(url, bodies, count, seconds, warmup) for count in clients]
        return {"server": server, "seconds_to_first_answer": ready, "memory_mb": memory_mb(process.pid), "load": points}
    finally:
        process.terminate()
        process.wait(timeout=60)


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    for model, servers in results.items():
        print(
            f"\n{model}: {'server':<14}{'start s':>8}{'PSS MB':>8}{'clients':>8}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        )
        for entry in servers:
            for point in entry["load"]:
                print(
                    f"{'':<{len(model) + 2}}{entry['server']:<14}{entry['seconds_to_first_answer']:>8.1f}"
                    f"{entry['memory_mb']:>8.0f}{point['clients']:>8}{point['requests_per_s']:>8.0f}"
                    f"{point['p50_ms']:>8.1f}{point['p99_ms']:>8.1f}"
                    + (f"  {point['errors']} errors" if point["errors"] else "")
                )
        by_name = {entry["server"]: entry["load"][-1] for entry in servers}
        if "plain" in by_name and "serve_batched" in by_name:
            most = by_name["serve_batched"]
            ratio = most["requests_per_s"] / by_name["plain"]["requests_per_s"]
            clients, p99 = most["clients"], most["p99_ms"]
            print(
                f"  at {clients} clients, batching serves {ratio:.1f}x the plain server's requests/s, p99 {p99:.0f} ms"
            )


def run(
    data_dir: str = "data",
    models: Sequence[Model] = ("cnn", "mlp"),
    servers: Sequence[Server] = SERVERS,
    clients: Sequence[int] = (1, 8, 32),
    seconds: float = 4.0,
    warmup: float = 1.0,
    train_batches: int = 50,
    threads: int = 1,
    output: str = "bench-serve.json",
) -> dict[str, Any]:
    """Measure each server under load, print the table and write it to `output` as JSON.

    Args:
        data_dir: folder holding MNIST/raw (else synthetic digits are written to a temporary folder)
        models: configs/<model>.yaml to serve
        servers: which servers to measure
        clients: the numbers of concurrent clients
        seconds: how long each number of clients is measured
        warmup: seconds of load before the measurement
        train_batches: batches the models are fitted for
        threads: compute threads of every server process (OMP_NUM_THREADS); 1 by default: on a 2-core machine
            shared with the clients (and other work), two OpenMP threads wait for each other whenever one core is
            taken, which made the CNN's plain server 5x slower here
        output: where the figures are written as JSON
    """
    with tempfile.TemporaryDirectory(prefix="proj-serve-bench-") as scratch:
        data = Path(data_dir)
        if not (data / "MNIST" / "raw").is_dir():
            print(f"no MNIST in {data_dir}: synthetic digits")
            data = write_synthetic_mnist(Path(scratch) / "data", 2000, IMAGES)
        bodies = request_bodies(data)
        results: dict[str, list[dict[str, Any]]] = {}
        for model in models:
            checkpoint, exported = fitted(model, data, Path(scratch) / "logs", train_batches)
            files = {server: exported if server.startswith("onnx") else checkpoint for server in servers}
            results[model] = [
                asyncio.run(measure(server, files[server], bodies, clients, seconds, warmup, threads))
                for server in servers
            ]
    machine = {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": threads, "load": os.getloadavg()}
    figures = {"machine": machine, "seconds": seconds, "warmup": warmup, "results": results}
    report(results)
    Path(output).write_text(json.dumps(figures, indent=2))
    print(f"\nfigures written to {output}")
    return figures


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m proj.serve_bench`: a bad flag or value is one `error: ...` line and exit status 2."""
    return run_command(run, argv, "python -m proj.serve_bench", __doc__)


if __name__ == "__main__":
    main()
