"""The traffic splitter: which arm answers a request, the shadow call beside it, and what is recorded.

A plain class behind :class:`ChatEngine` (one call: a chat completion on a named model, streamed as
OpenAI chunks or answered whole), so it is tested without Ray; the Serve ingress
(app.ab.deployment) is a thin adapter that gives it Serve's model handles.

Per request:
- the unit is the ``ab.unit_header`` header, else the body's ``user`` field, else the request itself;
- the arm comes from the unit's hash bucket (app.ab.assign) and the live split;
- the body's public model name is replaced by the arm's model, and the answer goes back unchanged,
  with ``X-Experiment``, ``X-Experiment-Arm`` and ``X-Experiment-Request-Id`` headers;
- when the request ends (the last streamed chunk, or the whole answer), one event is recorded: arm,
  unit, question and answer, TTFT and end-to-end latency, output tokens, status;
- shadow mode: for a share of the baseline's requests the same body also goes to the shadow arm in a
  background task the response never waits for; at most ``max_in_flight`` such tasks run (more are
  shed), each is cancelled after ``timeout_s``, and its answer is recorded beside the served one
  (``role='shadow'``, ``primary_id`` = the served request's id). Shed and timed-out calls are
  recorded too, so the counts are in the database.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.ab.assign import ArmRange, assign, bucket, bucket_ranges
from app.ab.config import AbConfig, check_weights

log = logging.getLogger(__name__)

# Not X-Request-Id: Ray Serve's proxy sets that one (to a client-supplied value when there is one).
HEADER_EXPERIMENT, HEADER_ARM, HEADER_REQUEST = "X-Experiment", "X-Experiment-Arm", "X-Experiment-Request-Id"


class ChatEngine(Protocol):
    def chat(self, model: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """OpenAI chat completion chunks for ``body`` on ``model`` (one full response when not streaming).
        Raises on failure; an error chunk ``{"error": {...}}`` is a failure too."""
        ...


class EventSink(Protocol):
    def record(self, event: dict[str, Any]) -> str: ...


@dataclass
class Split:
    """The live split (the part of the config that changes without a restart)."""

    weights: dict[str, float]
    shadow_fraction: float
    coverage: float = 1.0
    ranges: list[ArmRange] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ranges = bucket_ranges(list(self.weights.items()), self.coverage)


@dataclass
class Routed:
    """What the ingress returns: the arm's chunks (or response), the headers, the request id."""

    request_id: str
    arm: str
    model: str
    headers: dict[str, str]
    stream: AsyncIterator[dict[str, Any]]


def question_of(body: Mapping[str, Any]) -> tuple[str, str | None]:
    """(the last user message's text, the system message's text as the context it carried, if any)."""
    question, context = "", None
    for m in body.get("messages") or []:
        if not isinstance(m, Mapping):
            continue
        content = m.get("content")
        text = content if isinstance(content, str) else " ".join(
            p.get("text", "") for p in content or [] if isinstance(p, Mapping))
        if m.get("role") == "user":
            question = text
        elif m.get("role") == "system":
            context = text
    return question, context


class Splitter:
    def __init__(self, cfg: AbConfig, engine: ChatEngine, sink: EventSink, reference_of=None):
        self.cfg = cfg
        self.engine = engine
        self.sink = sink
        # The known answer of a question, when it has one (the test split; None for live traffic).
        self.reference_of = reference_of or (lambda body, question: None)
        self.models = {a.name: a.model for a in cfg.arms}
        self.split = Split({a.name: a.weight for a in cfg.arms},
                           cfg.shadow.fraction if cfg.shadow.enabled else 0.0, cfg.coverage)
        self._shadow_in_flight = 0  # counted when a shadow call is started, not when its task first runs
        self._shadow_tasks: set[asyncio.Task] = set()
        self.counters = {"requests": 0, "shadow_started": 0, "shadow_shed": 0, "shadow_timeout": 0,
                         "shadow_error": 0}

    # -- configuration ---------------------------------------------------------------------------
    def reconfigure(self, weights: Mapping[str, float] | None = None, shadow_fraction: float | None = None) -> Split:
        """Change the split live: unknown arms or weights that do not sum to 1 are refused (ValueError)."""
        new = dict(weights if weights is not None else self.split.weights)
        if set(new) != set(self.models):
            raise ValueError(f"the split must give a weight to each arm {sorted(self.models)}, got {sorted(new)}")
        check_weights(new)
        fraction = self.split.shadow_fraction if shadow_fraction is None else shadow_fraction
        if not 0 <= fraction <= 1:
            raise ValueError(f"shadow_fraction must be in [0, 1], got {fraction}")
        if fraction > 0 and not self.cfg.shadow.enabled:
            raise ValueError("shadow_fraction > 0 needs ab.shadow.enabled (the shadow arm is chosen at start)")
        self.split = Split(new, fraction, self.cfg.coverage)
        return self.split

    # -- one request -----------------------------------------------------------------------------
    def unit_of(self, headers: Mapping[str, str], body: Mapping[str, Any], request_id: str) -> str:
        unit = headers.get(self.cfg.unit_header.lower()) or headers.get(self.cfg.unit_header)
        if not unit and isinstance(body.get("user"), str):
            unit = body["user"]
        return (unit or f"request:{request_id}")[:200]

    def arm_for(self, unit: str) -> tuple[str, bool]:
        """(arm, in the experiment): units outside the covered part get the baseline, uncounted."""
        arm = assign(self.cfg.experiment, unit, self.split.ranges)
        return (arm, True) if arm is not None else (self.cfg.baseline, False)

    def route(self, body: dict[str, Any], headers: Mapping[str, str]) -> Routed:
        """Choose the arm for ``body`` (asking for ``ab.public_model``) and start its answer."""
        request_id = uuid.uuid4().hex
        unit = self.unit_of(headers, body, request_id)
        arm, counted = self.arm_for(unit)
        model = self.models[arm]
        arm_body = {**body, "model": model}
        self.counters["requests"] += 1
        question, context = question_of(body)
        reference = self.reference_of(body, question)
        base_event = {"id": request_id, "experiment": self.cfg.experiment, "unit": unit, "arm": arm, "model": model,
                      "role": "served" if counted else "outside", "question": question[:20000],
                      "context": context[:20000] if context else None, "reference": reference}
        if counted and arm == self.cfg.baseline and self._shadow_wanted(request_id):
            self._start_shadow(body, base_event)
        headers_out = {HEADER_EXPERIMENT: self.cfg.experiment, HEADER_ARM: arm, HEADER_REQUEST: request_id}
        return Routed(request_id, arm, model, headers_out, self._recorded(model, arm_body, base_event))

    def _shadow_wanted(self, request_id: str) -> bool:
        f = self.split.shadow_fraction
        return f > 0 and (f >= 1 or bucket(self.cfg.experiment + ":shadow", request_id) < f)

    async def _recorded(self, model: str, body: dict[str, Any], event: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The engine's chunks, passed through as they come; the event is recorded when they end."""
        start = time.perf_counter()
        ttft = None
        parts: list[str] = []
        tokens = 0
        status, error = "ok", ""
        try:
            async for chunk in self.engine.chat(model, body):
                if isinstance(chunk, Mapping) and chunk.get("error"):
                    status, error = "error", str(chunk["error"])[:2000]
                text, n = _chunk_text(chunk)
                if text and ttft is None:
                    ttft = (time.perf_counter() - start) * 1000
                parts.append(text)
                tokens += n
                yield chunk
        except asyncio.CancelledError:  # the client went away: what it got is still an answer to record
            status, error = "error", "cancelled: the client disconnected"
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, then the ingress answers with the error
            status, error = "error", f"{type(exc).__name__}: {exc}"[:2000]
            raise
        finally:
            self._record(event, status, error, "".join(parts), ttft, start, tokens)

    def _record(self, event: dict[str, Any], status: str, error: str, answer: str, ttft: float | None,
                start: float, tokens: int) -> None:
        try:
            self.sink.record({**event, "status": status, "error": error, "answer": answer[:20000],
                              "ttft_ms": ttft, "e2e_ms": (time.perf_counter() - start) * 1000,
                              "output_tokens": tokens})
        except Exception:  # noqa: BLE001 - a lost event is logged; it never fails the user's request
            log.exception("could not record A/B event %s", event.get("id"))

    # -- shadow ----------------------------------------------------------------------------------
    def _start_shadow(self, body: dict[str, Any], served: dict[str, Any]) -> None:
        """Shadow the served request whose event is ``served`` (same unit, question, context, reference)."""
        arm = self.cfg.shadow_arm()
        model = self.models[arm]
        event = {**served, "id": uuid.uuid4().hex, "arm": arm, "model": model, "role": "shadow",
                 "primary_id": served["id"]}
        if self._shadow_in_flight >= self.cfg.shadow.max_in_flight:  # shed now, never queue behind a slow arm
            self.counters["shadow_shed"] += 1
            self._record(event, "shed", f"{self.cfg.shadow.max_in_flight} shadow calls already in flight", "", None,
                         time.perf_counter(), 0)
            return
        shadow_body = copy.deepcopy(body)
        shadow_body["model"] = model
        shadow_body["stream"] = False
        shadow_body.pop("stream_options", None)
        self._shadow_in_flight += 1
        task = asyncio.get_running_loop().create_task(self._shadow(model, shadow_body, event))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task: asyncio.Task) -> None:
        self._shadow_in_flight -= 1
        self._shadow_tasks.discard(task)

    async def _shadow(self, model: str, body: dict[str, Any], event: dict[str, Any]) -> None:
        self.counters["shadow_started"] += 1
        start = time.perf_counter()
        parts: list[str] = []
        tokens = 0

        async def run() -> None:
            nonlocal tokens
            async for chunk in self.engine.chat(model, body):
                if isinstance(chunk, Mapping) and chunk.get("error"):
                    raise RuntimeError(str(chunk["error"])[:500])
                text, n = _chunk_text(chunk)
                parts.append(text)
                tokens += n

        try:
            await asyncio.wait_for(run(), timeout=self.cfg.shadow.timeout_s)
            self._record(event, "ok", "", "".join(parts), None, start, tokens)
        except asyncio.TimeoutError:
            self.counters["shadow_timeout"] += 1
            self._record(event, "timeout", f"no answer within ab.shadow.timeout_s={self.cfg.shadow.timeout_s}",
                         "".join(parts), None, start, tokens)
        except Exception as exc:  # noqa: BLE001 - a failing shadow never touches the user's request
            self.counters["shadow_error"] += 1
            self._record(event, "error", f"{type(exc).__name__}: {exc}"[:2000], "", None, start, tokens)

    @property
    def shadow_in_flight(self) -> int:
        return self._shadow_in_flight

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait for the shadow calls in flight (tests, shutdown)."""
        if self._shadow_tasks:
            await asyncio.wait(set(self._shadow_tasks), timeout=timeout_s)


def _chunk_text(chunk: Any) -> tuple[str, int]:
    """(text, completion tokens) of a chat chunk or a whole chat response."""
    if not isinstance(chunk, Mapping):
        return "", 0
    text = ""
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, Mapping):
            continue
        part = (choice.get("delta") or {}).get("content") if "delta" in choice else \
            (choice.get("message") or {}).get("content")
        text += part or ""
    usage = chunk.get("usage") or {}
    n = usage.get("completion_tokens") if isinstance(usage, Mapping) else None
    if n is None:
        n = 1 if "delta" in ((chunk.get("choices") or [{}])[0] or {}) and text else 0
    return text, int(n or 0)


__all__ = ["Splitter", "Split", "Routed", "ChatEngine", "EventSink", "question_of", "HEADER_EXPERIMENT", "HEADER_ARM",
           "HEADER_REQUEST"]
