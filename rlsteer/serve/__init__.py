"""``rlsteer serve``: an OpenAI-compatible HTTP server over the base model and steered models (``rlsteer[serve]``).

Each vector file or run served is one model name, the base model another; any OpenAI client (the
``openai`` package, lm-evaluation-harness's ``local-completions``, curl) talks to it. FastAPI and uvicorn
carry the HTTP layer (:mod:`rlsteer.serve.app`); one engine thread batches the requests that wait
(:mod:`rlsteer.serve.engine`) on the HF backend, or hands them to vLLM, which schedules them itself.

Example:
    >>> cfg = ServeConfig(targets=("runs/demo/all-layers",), port=8000)
    >>> serve(cfg)  # doctest: +SKIP
    >>> with ServerThread(build_state(cfg)) as url:  # doctest: +SKIP
    ...     print(url)  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Literal

from rlsteer.errors import RlsteerError
from rlsteer.serve.catalog import ServeError, build_catalog


@dataclass(frozen=True)
class ServeConfig:
    """What ``rlsteer serve`` serves and where.

    Attributes:
        targets: vector files or run directories, each optionally ``NAME=TARGET``.
        model: the base model spec (None: the one the vectors were trained on).
        base_name: the base model's name in the API (None: ``model``).
        host / port: where to listen (127.0.0.1: this machine only; port 0 picks a free port).
        backend: ``hf`` (any site or patch, streams token by token) or ``vllm``.
        batch_size: HF rows decoded together at most.
        max_model_len: prompt + completion at most (None: the model's maximum position).
    """

    targets: tuple[str, ...] = ()
    model: str | None = None
    base_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    backend: Literal["hf", "vllm"] = "hf"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = 32
    max_model_len: int | None = None
    vllm_gpu_memory_utilization: float = 0.5


def build_state(cfg: ServeConfig) -> Any:
    """Load the model, the vectors and the engine: a :class:`rlsteer.serve.app.ServerState`."""
    _require_extra()
    from rlsteer.config import BackendSection, ModelSection
    from rlsteer.models import load_model, model_folder
    from rlsteer.rollout.factory import make_backend
    from rlsteer.serve.app import ServerState
    from rlsteer.serve.engine import Engine

    if cfg.batch_size < 1:
        raise ServeError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    base, models = build_catalog(cfg.targets, cfg.model, cfg.base_name)
    engine = BackendSection(backend=cfg.backend, batch_size=cfg.batch_size,
                            vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, vllm_enforce_eager=True)
    if cfg.backend == "vllm":  # vLLM holds the weights: no transformers copy of the model
        from transformers import AutoConfig, AutoTokenizer

        folder = model_folder(base)
        tok = AutoTokenizer.from_pretrained(folder)
        model = None
        limit = cfg.max_model_len or _max_positions(AutoConfig.from_pretrained(folder))
    else:
        model, tok = load_model(base, dtype=cfg.dtype, device=cfg.device)
        limit = cfg.max_model_len or _max_positions(model.config)
    backend = make_backend(ModelSection(name=base, dtype=cfg.dtype, device=cfg.device), engine, model, tok,
                           max_model_len=limit, progress=False)
    for served in models:  # load and check every file now, not at the first request
        served.steering(1.0, model)
    return ServerState(engine=Engine(backend, tok, max_batch=cfg.batch_size if cfg.backend == "hf" else 256),
                       tokenizer=tok, model=model, base=base, models=models, max_model_len=limit)


def _max_positions(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "max_position_embeddings", 0) or 4096)


def _require_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise RlsteerError(f"rlsteer serve needs the serve extra ({err}); pip install 'rlsteer[serve]'") from None


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), or a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}; pick another --port (0: any free "
                         "one) or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(state: Any, sock: socket.socket) -> Any:
    import uvicorn

    from rlsteer.serve.app import create_app

    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve(cfg: ServeConfig) -> None:
    """Serve until SIGINT/SIGTERM (then return normally); prints the address and the model names first."""
    _require_extra()
    sock = bind(cfg.host, cfg.port)  # before the model loads: a taken port fails at once
    state = build_state(cfg)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/v1"
    print(f"rlsteer serve: {state.base} on {cfg.backend}, models: {', '.join(m.name for m in state.models)}\n"
          f"listening on {url} (OpenAI API: /models, /completions, /chat/completions; Ctrl-C stops)", flush=True)
    server = _server(state, sock)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the handlers it found:
    # these record it, so that a server stopped on request ends normally (status 0) with one line
    caught: list[str] = []
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda number, frame: caught.append(signal.Signals(number).name)) for s in stops}
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        state.engine.close()
        sock.close()
    print(f"rlsteer serve: stopped{f' by {caught[0]}' if caught else ''}", file=sys.stderr)


class ServerThread:
    """A server on 127.0.0.1 and a free port in a background thread; ``with`` gives its ``/v1`` URL and stops
    it (and its engine) on exit. For tests, benchmarks and notebooks."""

    def __init__(self, state: Any, host: str = "127.0.0.1") -> None:
        self.state = state
        self.sock = bind(host, 0)
        self.server = _server(state, self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> str:
        self.thread.start()
        import time

        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServeError("the server thread did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.state.engine.close()
        self.sock.close()


__all__ = ["ServeConfig", "ServeError", "ServerThread", "bind", "build_state", "serve"]
