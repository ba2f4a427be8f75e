"""`coldrec serve`: recommendations over HTTP for known users, brand-new users and new items.

FastAPI on uvicorn (the optional extra `coldrec[serve]`). The routes:
- POST /recommend {"user_id": ...} or {"user": {attributes}}, "k", "exclude" -> top-k items;
- POST /items {"items": [{"item_id": ..., attributes}]} -> embedded into the index's delta;
- GET /healthz, GET /version (model and index fingerprints), GET /metrics (Prometheus).
Bad input is a 4xx whose "error" names the field; a body over MAX_BODY bytes is refused (413).
A background thread checks every `reload_every` seconds whether the model or index moved
(serving.Served.refresh); requests in flight finish on the pair they started with.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from coldrec import __version__, log
from coldrec.errors import ColdrecError
from coldrec.row_inputs import BadRow
from coldrec.serving import MAX_K, BadRequest, Served, UnknownId, recommend, user_query

MAX_BODY = 1 << 20  # bytes of a request body
MAX_LIST = 10_000  # items per /items request, ids per exclude list
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SETTINGS_ENV = "COLDREC_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int | str | None = Field(None, description="A user the model knows (in the served users table).")
    user: dict[str, Any] | None = Field(None, description="A new user's content attributes, by column name.")
    k: int = Field(20, ge=1, le=MAX_K)
    exclude: list[int | str] = Field(default_factory=list, max_length=MAX_LIST)


class ItemsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_LIST)


def create_app(served: Served, reload_every: float = 1.0) -> FastAPI:
    """The HTTP app over `served`; it refreshes the pair every `reload_every` seconds (0: never)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        stop = threading.Event()
        if reload_every > 0:
            threading.Thread(target=_reloader, args=(served, reload_every, stop), daemon=True, name="coldrec-reload").start()
        yield
        stop.set()

    app = FastAPI(title="coldrec", version=__version__, lifespan=lifespan)
    _instrument(app)

    @app.post("/recommend")
    def post_recommend(body: RecommendBody) -> dict[str, Any]:
        if (body.user_id is None) == (body.user is None):
            raise BadRequest("give either 'user_id' (a known user) or 'user' (a new user's attributes)")
        pair = served.pair  # one pair for the whole request
        query, cold = user_query(pair, body.user_id, body.user)
        return {"items": recommend(pair, query, body.k, body.exclude), "cold": cold, "model": pair.fingerprint, "index": pair.build_id}

    @app.post("/items")
    def post_items(body: ItemsBody) -> dict[str, Any]:
        added = served.add_items(body.items)
        return {"added": added, "index": served.pair.build_id}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/version")
    def version() -> dict[str, Any]:
        return {"coldrec": __version__, **served.pair.version(), "reloads": served.reloads}

    return app


def _instrument(app: FastAPI) -> None:
    """Body limit, Prometheus counters and latency, and 4xx errors that name the field."""
    registry = CollectorRegistry()
    requests = Counter("coldrec_requests", "HTTP requests by route and status", ["route", "status"], registry=registry)
    latency = Histogram("coldrec_request_seconds", "Request latency by route", ["route"], buckets=LATENCY_BUCKETS, registry=registry)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            response: Response = _error(413, f"the request body is over {MAX_BODY:,} bytes")
        else:
            response = await call_next(request)
        route = request.url.path if request.url.path in ("/recommend", "/items", "/healthz", "/version", "/metrics") else "other"
        requests.labels(route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        return _error(422, f"{field}: {first.get('msg', 'invalid')}")

    @app.exception_handler(BadRequest)
    @app.exception_handler(BadRow)
    async def bad_request(_: Request, error: ValueError) -> JSONResponse:
        return _error(422, str(error))

    @app.exception_handler(UnknownId)
    async def not_found(_: Request, error: UnknownId) -> JSONResponse:
        return _error(404, str(error.args[0]) if error.args else "not found")

    @app.exception_handler(ColdrecError)
    async def refused(_: Request, error: ColdrecError) -> JSONResponse:
        return _error(422, str(error))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _reloader(served: Served, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            served.refresh()
        except Exception as error:  # noqa: BLE001 - the server keeps serving the pair it has
            log.warning(f"serve: reload failed: {error}")


def app_from_env() -> FastAPI:
    """The app of one uvicorn worker (`--workers N`): settings from SETTINGS_ENV."""
    settings = json.loads(os.environ[SETTINGS_ENV])
    return _build(**settings)


def _build(model: str, index: str, users: str | None, stats: str | None, reload_every: float, search: str = "auto") -> FastAPI:
    import torch

    torch.set_num_threads(1)  # one request's embedding is tiny; workers scale across cores
    exact = {"auto": None, "exact": True, "annoy": False}[search]
    served = Served(Path(model), Path(index), Path(users) if users else None, Path(stats) if stats else None, exact=exact)
    log.info(f"serve: model {served.pair.fingerprint} / index {served.pair.build_id}: {served.pair.index.count:,} items, "
             f"{len(served.pair.user_rows):,} known users")
    return create_app(served, reload_every)


def run_serve(model: Path, index: Path, *, users: Path | None = None, stats: Path | None = None, host: str = "127.0.0.1",
              port: int = 8000, workers: int = 1, reload_every: float = 1.0, search: str = "auto") -> None:
    """Serve until interrupted. Bad inputs raise before the port is opened."""
    import uvicorn

    settings = {"model": str(model), "index": str(index), "users": str(users) if users else None,
                "stats": str(stats) if stats else None, "reload_every": reload_every, "search": search}
    if workers == 1:
        uvicorn.run(_build(**settings), host=host, port=port, log_level="warning", access_log=False)
        return
    _build(**settings)  # check the inputs once, in this process, before forking workers
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    uvicorn.run("coldrec.serve:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="warning", access_log=False)
