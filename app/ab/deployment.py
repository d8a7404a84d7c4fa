"""The traffic-splitting Serve ingress: Ray's OpenAI ingress with an experiment in front of its models.

A thin adapter; the routing is :class:`app.ab.router.Splitter`, tested without Ray. What it adds to
``OpenAiIngress`` (Ray 2.60, ``ray.serve.llm.ingress``):

- ``POST /v1/chat/completions`` for ``ab.public_model``: the splitter picks the arm and the body goes to
  that arm's model deployment through the ingress's own Serve handle; the answer (whole, or streamed
  as server-sent events) carries ``X-Experiment``, ``X-Experiment-Arm`` and ``X-Experiment-Request-Id``
  (the id feedback names). Every other model name is Ray's ingress unchanged;
- ``GET /v1/models`` lists the public name beside the store models;
- ``POST /v1/feedback`` ``{request_id, thumbs_up?, rating?, comment?, user?}``: a user's verdict on a
  response, stored once (4xx for an unknown id, a shadow call, a bad rating, a second verdict). It is
  behind the same request guard and API key as the generation routes (the writes of this endpoint);
- ``GET /v1/experiment``: the live split, the splitter's counters and the event writer's state;
- the split changes without restarting anything: Serve's ``user_config`` (``reconfigure``), and the
  experiment database's latest split (``app ab split`` / promotion of a winner writes it), which every
  ingress replica polls every ``SPLIT_POLL_S`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray.llm._internal.serve.core.configs.openai_api_models import (ChatCompletionRequest, ModelCard, ModelList,
                                                                    OpenAIHTTPException)
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request
from ray.serve.llm.ingress import OpenAiIngress
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from app.ab.config import AbConfig
from app.ab.router import Splitter
from app.ab.store import EventWriter, ExperimentStore, FeedbackError, database_url, spool_dir

log = logging.getLogger(__name__)
SPLIT_POLL_S = 2.0

ROUTES = {
    "feedback": lambda app: app.post("/v1/feedback", status_code=201),
    "experiment_status": lambda app: app.get("/v1/experiment"),
}


def chunks_of(item: Any) -> list[dict[str, Any]]:
    """An LLM deployment's streamed item as OpenAI chunk dicts: a pydantic response or chunk, a dict, a
    server-sent-events string (``data: {...}``), or a batch (list) of any of these."""
    if isinstance(item, list):
        return [c for i in item for c in chunks_of(i)]
    if hasattr(item, "model_dump"):
        return [item.model_dump(mode="json", exclude_none=True)]
    if isinstance(item, dict):
        return [item]
    if isinstance(item, (str, bytes)):
        text = item.decode() if isinstance(item, bytes) else item
        out = []
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("data:"):
                payload = line[5:].strip()
                if payload and payload != "[DONE]":
                    out.append(json.loads(payload))
        return out
    raise TypeError(f"unexpected item from the model deployment: {type(item).__name__}")


class ServeEngine:
    """:class:`app.ab.router.ChatEngine` over the ingress's Serve handles to the model deployments."""

    def __init__(self, ingress: OpenAiIngress):
        self.ingress = ingress

    async def chat(self, model: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        request = _sanitize_chat_completion_request(ChatCompletionRequest.model_validate(body))
        handle = self.ingress._get_configured_serve_handle(model)
        async for item in handle.chat.remote(request, None):
            for chunk in chunks_of(item):
                yield chunk


class ExperimentIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, experiment: dict[str, Any], home: str, **kwargs: Any):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self.cfg = AbConfig.model_validate(experiment)  # build_app checked the arms against the served models
        url = database_url(self.cfg.db, Path(home))
        self.writer = EventWriter(url, spool_dir(Path(home), self.cfg.experiment))
        self.store = ExperimentStore(url, pending=self.writer)
        self.splitter = Splitter(self.cfg, ServeEngine(self), self.writer)
        self._split_seen: str | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._watch_split, name="ab-split-watch", daemon=True).start()

    # -- live split ------------------------------------------------------------------------------
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's ``user_config``: ``{"weights": {arm: w}, "shadow_fraction": f}`` (either may be left out)."""
        if user_config:
            self.splitter.reconfigure(user_config.get("weights"), user_config.get("shadow_fraction"))
            log.info("A/B split set by user_config: %s", self.splitter.split.weights)

    def _watch_split(self) -> None:
        while not self._stop.wait(SPLIT_POLL_S):
            try:
                latest = self.store.latest_split(self.cfg.experiment)
                if latest is None:
                    continue
                key = json.dumps(latest, sort_keys=True)
                if key != self._split_seen:  # a new row (also the first seen after a restart): apply it
                    self.splitter.reconfigure(latest["weights"], latest.get("shadow_fraction"))
                    log.info("A/B split set to %s, shadow %s (%s)", latest["weights"], latest.get("shadow_fraction"),
                             latest.get("reason", ""))
                    self._split_seen = key
            except Exception:  # noqa: BLE001 - a bad row or a locked database: keep the current split
                log.exception("could not read the experiment's split")

    def __del__(self) -> None:
        self._stop.set()
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close(timeout_s=5)

    # -- OpenAI routes ---------------------------------------------------------------------------
    async def models(self) -> ModelList:
        listed = await super().models()
        card = ModelCard(id=self.cfg.public_model, object="model", owned_by="ab-experiment", permission=[],
                         metadata={"experiment": self.cfg.experiment, "arms": {a.name: a.model for a in self.cfg.arms}})
        return ModelList(data=[*listed.data, card])

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        if body.model != self.cfg.public_model:
            return await super().chat(body, request)
        routed = self.splitter.route(body.model_dump(mode="json", exclude_unset=True), request.headers)
        stream = routed.stream
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise OpenAIHTTPException(message=f"arm {routed.arm} returned no answer", status_code=502,
                                      type="BadGateway") from None
        except OpenAIHTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded by the splitter; the client gets a 5xx in OpenAI's shape
            raise OpenAIHTTPException(message=f"arm {routed.arm} failed: {type(exc).__name__}: {exc}"[:500],
                                      status_code=502, type="BadGateway") from None
        if first.get("error"):
            await stream.aclose()  # records the event
            err = first["error"] if isinstance(first["error"], dict) else {"message": str(first["error"])}
            code = err.get("code")
            raise OpenAIHTTPException(message=str(err.get("message")), type=str(err.get("type") or "Error"),
                                      status_code=code if isinstance(code, int) and 400 <= code < 600 else 500)
        if not body.stream:
            async for _ in stream:  # a whole answer is one item; this ends the stream and records it
                pass
            return JSONResponse(first, headers=routed.headers)

        async def events() -> AsyncIterator[str]:
            yield f"data: {json.dumps(first)}\n\n"
            async for chunk in stream:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=routed.headers)

    # -- experiment routes -----------------------------------------------------------------------
    async def feedback(self, request: Request) -> Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body must be a JSON object {request_id, thumbs_up?, rating?, comment?}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object {request_id, thumbs_up?, rating?, comment?}")
        unknown = set(body) - {"request_id", "thumbs_up", "rating", "comment", "user"}
        if unknown:
            return _error(422, f"unknown feedback fields {sorted(unknown)}; allowed: request_id, thumbs_up, rating, "
                          "comment, user", sorted(unknown)[0])
        thumbs, comment, user = body.get("thumbs_up"), body.get("comment", ""), body.get("user")
        if thumbs is not None and not isinstance(thumbs, bool):
            return _error(422, f"thumbs_up must be true or false, got {thumbs!r}"[:200], "thumbs_up")
        if not isinstance(comment, str):
            return _error(422, "comment must be a string", "comment")
        if user is not None and not isinstance(user, str):
            return _error(422, "user must be a string", "user")
        account = (user or request.headers.get(self.cfg.unit_header) or "anonymous")[:200]
        try:
            stored = await asyncio.to_thread(self.store.add_feedback, body.get("request_id"), account, thumbs,
                                             body.get("rating"), comment)
        except FeedbackError as exc:
            return _error(exc.status, str(exc), "request_id" if exc.status in (404, 400, 409) else None)
        return JSONResponse(stored, status_code=201)

    async def experiment_status(self) -> dict[str, Any]:
        split = self.splitter.split
        return {"experiment": self.cfg.experiment, "public_model": self.cfg.public_model,
                "baseline": self.cfg.baseline, "arms": {a.name: a.model for a in self.cfg.arms},
                "weights": split.weights, "shadow_fraction": split.shadow_fraction,
                "counters": dict(self.splitter.counters), "shadow_in_flight": self.splitter.shadow_in_flight,
                "writer": dict(self.writer.stats)}


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status != 404 else "not_found_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status)


def build_app(args: dict[str, Any]):
    """The Serve application of an experiment: ``args`` are :class:`app.serving.builder.ServeAppArgs`'s
    plus ``ab`` (the :class:`AbConfig`); every arm's model must be in ``serving.models``."""
    from app.serving.builder import ServeAppArgs, build_openai_app

    class ExperimentAppArgs(ServeAppArgs):
        ab: AbConfig

    parsed = ExperimentAppArgs.model_validate(args)
    missing = [a.model for a in parsed.ab.arms if a.model not in parsed.serving.models]
    if missing:
        raise ValueError(f"ab.arms serve {missing}, which serving.models {parsed.serving.models} does not deploy")
    if parsed.ab.public_model in parsed.serving.models:
        raise ValueError(f"ab.public_model {parsed.ab.public_model!r} is also a served model's name: clients could not "
                         "tell the experiment from that model")
    return build_openai_app(parsed, ingress=ExperimentIngress, routes=ROUTES, public_models=(parsed.ab.public_model,),
                            experiment=parsed.ab.model_dump(mode="json"), home=parsed.home)


__all__ = ["ExperimentIngress", "ServeEngine", "chunks_of", "ROUTES", "build_app"]
