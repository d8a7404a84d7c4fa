"""A bad-input matrix generated from a web app's OpenAPI schema, not picked by hand.

:func:`fuzz` loads the schema of an ASGI app (in process, no server) or of a running server (a base
URL) and sends every operation three kinds of requests:

1. *coverage*: schemathesis's coverage cases (boundary values, missing and wrongly typed fields,
   unexpected methods and media types, valid and invalid), at most ``coverage_cases`` of them;
2. *matrix*: every declared parameter (path, query) and every top-level body field, each set in turn to
   every value of a fixed list of hostile values (:data:`HOSTILE_TEXT`, and for JSON bodies
   :data:`HOSTILE_JSON`: huge and non-finite numbers, a lone surrogate escape, NUL, digits that are not
   ASCII, wrong types...), on top of a minimal valid request; then whole bodies that are not what the
   media type promises (:data:`HOSTILE_BODIES`: empty, truncated, not UTF-8, nested 100,000 deep).
   schemathesis cannot make these: it draws strings from valid Unicode and numbers from the schema's
   types, and these apps declare many numbers as strings;
3. *generated*: ``max_examples`` Hypothesis examples from schemathesis's strategies, valid and invalid.

Every answer is checked:

- no 5xx (schemathesis's ``not_a_server_error``; an in-process app that raises is answered 500, as a
  server would, and the exception is reported);
- every 4xx names its problem: JSON with a non-empty message (``{"error": ...}`` by default; the
  extractor is a parameter), or, for the HTML pages a test names, a non-empty body;
- a refused request (4xx) changed nothing stored: ``snapshot()`` (for instance :func:`sqlite_snapshot`)
  taken before and after each call must be equal when the answer is 4xx (accepted writes may change it);
- ``check(case, response)``, when given, returns a problem (text) or None;
- after the run the app still answers a known-good request.

Reproducible: a fixed Hypothesis seed per operation (from ``seed`` and its label), no example database,
no shrinking (each failing request is recorded as it was sent and the run goes on), ``deadline=None``.
schemathesis's stateful phase is not run (these apps declare no OpenAPI links); its coverage phase is
cut at ``coverage_cases``. A wall-time budget is shared among the operations: each may use what is left
after keeping half a fair share (``budget_s / 2n``) for each operation still to come, and at least its
fair share of what remains, so a slow operation may use what quick ones left but cannot starve the
others; one cut short is marked ``truncated``.

Routes that read their body with ``await request.json()`` or ``request.form()`` declare no body in
OpenAPI, so schemathesis would never send one: ``request_bodies`` adds a ``requestBody`` to such
operations of the loaded schema (the app is not changed), and the body is then generated and put in
the matrix like any declared one.

Usage::

    report = fuzz(app, headers=login, snapshot=sqlite_snapshot(db_path), max_examples=30, budget_s=60,
                  known_good=("GET", "/api/stats"))
    print(report.table())
    report.assert_clean()
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import requests
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st

import schemathesis
from schemathesis import GenerationMode, openapi
from schemathesis.checks import not_a_server_error

Headers = Mapping[str, str]
JSON_BODY = "application/json"
FORM_BODY = "application/x-www-form-urlencoded"

# Values every text parameter and field is set to in turn.
HOSTILE_TEXT: tuple[str, ...] = (
    "", " ", "\x00", "\u202e", "\ufeff", "²", "١٢", "-1", "0", "99999999999999999999", "1e309", "NaN", "null",
    "true", "../..", "%", "%00", "<script>", "x" * 5000)
# And every JSON body field, also to other types and text no database stores (a lone surrogate).
HOSTILE_JSON: tuple[Any, ...] = (
    *HOSTILE_TEXT, "\ud800", 2**64, -(2**63) - 1, 1.5, 1e308, float("inf"), float("nan"), True, False, None, [], {},
    {"x": [1]}, ["x"] * 1000)
# Whole bodies, sent with the operation's media type.
HOSTILE_BODIES: tuple[bytes, ...] = (
    b"", b"null", b"[]", b"0", b'"text"', b"{", b'{"a": 1,}', b"\xff\xfe\x00\x00", b"Infinity", b"1e999",
    b"[" * 100_000, b'{"a":' * 50_000, b"%", b"a=%ff&a=1&=&&")


# -- what is recorded --------------------------------------------------------------------------------


@dataclass
class OperationStats:
    """What one operation was sent and answered."""

    label: str  # "POST /api/items/{pair_id}/review"
    examples: int = 0  # requests sent: coverage + matrix + generated
    coverage: int = 0
    matrix: int = 0
    by_status: Counter = field(default_factory=Counter)  # status code -> answers
    unsendable: int = 0  # cases the HTTP client could not encode (not sent, not counted as examples)
    problems: int = 0
    seconds: float = 0.0
    truncated: bool = False  # its share of the wall-time budget ran out
    note: str = ""  # why generation stopped early, when it did

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.by_status.items() if 200 <= s < 300)

    @property
    def redirects(self) -> int:
        return sum(n for s, n in self.by_status.items() if 300 <= s < 400)

    @property
    def refused(self) -> dict[int, int]:
        return {s: n for s, n in sorted(self.by_status.items()) if 400 <= s < 500}

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.by_status.items() if s >= 500)

    def as_dict(self) -> dict[str, Any]:
        return {"operation": self.label, "examples": self.examples, "coverage": self.coverage, "matrix": self.matrix,
                "generated": self.examples - self.coverage - self.matrix, "2xx": self.ok, "3xx": self.redirects,
                "4xx": {str(k): v for k, v in self.refused.items()}, "5xx": self.server_errors,
                "unsendable": self.unsendable, "problems": self.problems, "seconds": round(self.seconds, 2),
                "truncated": self.truncated, "note": self.note}


@dataclass
class Problem:
    """One answer that failed a check."""

    operation: str
    kind: str  # "5xx", "unclear error", "refused but changed state", "check", "no answer", "not alive"
    request: str
    status: int | None
    answer: str
    detail: str = ""

    def __str__(self) -> str:
        return (f"[{self.kind}] {self.operation}: {self.request}\n    -> {self.status} {self.answer}"
                + (f"\n    {self.detail}" if self.detail else ""))


@dataclass
class FuzzReport:
    title: str
    operations: dict[str, OperationStats]
    problems: list[Problem]
    seconds: float

    @property
    def examples(self) -> int:
        return sum(s.examples for s in self.operations.values())

    @property
    def server_errors(self) -> int:
        return sum(s.server_errors for s in self.operations.values())

    def table(self) -> str:
        """The per-operation figures as a fixed-width text table."""
        rows = [("operation", "examples", "cov", "matrix", "gen", "2xx", "3xx", "4xx by status", "5xx", "problems", "s")]
        for s in self.operations.values():
            refused = " ".join(f"{k}:{v}" for k, v in s.refused.items()) or "-"
            rows.append((s.label + (" (truncated)" if s.truncated else ""), str(s.examples), str(s.coverage),
                         str(s.matrix), str(s.examples - s.coverage - s.matrix), str(s.ok), str(s.redirects), refused,
                         str(s.server_errors), str(s.problems), f"{s.seconds:.1f}"))
        rows.append(("total", str(self.examples), "", "", "", "", "", "", str(self.server_errors),
                     str(len(self.problems)), f"{self.seconds:.1f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i in (0, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        notes = [f"  {s.label}: {s.note}" for s in self.operations.values() if s.note]
        notes += [f"  {s.label}: {s.unsendable} cases the HTTP client could not encode (not sent)"
                  for s in self.operations.values() if s.unsendable]
        return f"== {self.title} ==\n" + "\n".join(lines + notes)

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "seconds": round(self.seconds, 2), "examples": self.examples,
                "5xx": self.server_errors, "operations": [s.as_dict() for s in self.operations.values()],
                "problems": [str(p) for p in self.problems]}

    def assert_clean(self, show: int = 12) -> None:
        """AssertionError listing (the first ``show``) problems, if any."""
        if self.problems:
            kinds = Counter(p.kind for p in self.problems)
            listed = "\n".join(str(p) for p in self.problems[:show])
            raise AssertionError(f"{self.title}: {len(self.problems)} problems {dict(kinds)}\n{listed}")


# -- helpers the tests pass in -------------------------------------------------------------------------


def json_error_message(response: Any) -> str | None:
    """The message of an ``{"error": message}`` answer; None when the body is not that."""
    try:
        data = response.json()
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"].strip():
        return data["error"]
    return None


def sqlite_snapshot(*paths: str | Path, ignore: Iterable[str] = ()) -> Callable[[], dict[str, list]]:
    """A ``snapshot()`` over SQLite files (paths or ``sqlite:///`` URLs): every row of every table but
    ``ignore``, sorted."""
    files = [Path(str(p).removeprefix("sqlite:///")) for p in paths]
    skip = set(ignore)

    def snapshot() -> dict[str, list]:
        out: dict[str, list] = {}
        for f in files:
            con = sqlite3.connect(f"file:{f}?mode=ro", uri=True)
            try:
                tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
                for t in tables:
                    if t not in skip:
                        out[f"{f.name}:{t}"] = sorted(map(repr, con.execute(f'SELECT * FROM "{t}"')))
            finally:
                con.close()
        return out

    return snapshot


def snapshot_diff(before: Mapping[str, list], after: Mapping[str, list], limit: int = 3) -> str:
    """What changed between two snapshots, briefly."""
    parts = []
    for key in sorted(set(before) | set(after)):
        b, a = set(before.get(key, [])), set(after.get(key, []))
        if a != b:
            parts.append(f"{key}: +{sorted(a - b)[:limit]} -{sorted(b - a)[:limit]}")
    return "; ".join(parts)


# -- the schema ----------------------------------------------------------------------------------------


def load_schema(app: Any = None, *, base_url: str | None = None, schema_path: str = "/api/openapi.json",
                request_bodies: Mapping[str, Mapping[str, Any]] | None = None,
                headers: Headers | None = None) -> Any:
    """The schemathesis schema of an ASGI ``app`` or of the server at ``base_url``.

    ``request_bodies`` maps an operation label ("POST /api/login") to a JSON schema of its body per
    media type, ``{"application/json": {...}}``; it becomes (or replaces) that operation's ``requestBody``."""
    if (app is None) == (base_url is None):
        raise ValueError("give either an ASGI app or a base URL")
    if app is not None:
        from schemathesis.python import asgi

        with asgi.get_client(app) as client:
            resp = client.get(schema_path, headers=dict(headers or {}))
    else:
        resp = requests.get(base_url.rstrip("/") + schema_path, headers=dict(headers or {}), timeout=30)
    resp.raise_for_status()
    raw = resp.json()
    for label, media in (request_bodies or {}).items():
        method, path = label.split(" ", 1)
        try:
            op = raw["paths"][path][method.lower()]
        except KeyError:
            raise ValueError(f"request_bodies: the schema has no operation {label!r}") from None
        op["requestBody"] = {"required": True, "content": {m: {"schema": s} for m, s in media.items()}}
    schema = openapi.from_dict(raw, config=schemathesis.Config())
    if app is not None:
        schema.app = app
        schema.location = schema_path
    else:
        schema.location = base_url.rstrip("/") + schema_path
    return schema


class CatchErrors:
    """ASGI wrapper: when the app raises, answer 500 as a server would (if it has not answered yet) and
    keep the exception in ``raised``, so the harness reports it like any 5xx and goes on."""

    def __init__(self, app: Any) -> None:
        self.app, self.raised = app, None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            self.raised = exc
            if not started:
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": b"Internal Server Error"})


# -- the run -------------------------------------------------------------------------------------------


class _OutOfTime(Exception):
    """Raised inside a loop or the Hypothesis test when the operation's share of the budget is spent."""


def fuzz(app: Any = None, *, base_url: str | None = None, schema_path: str = "/api/openapi.json",
         title: str = "", headers: Headers | Callable[[], Headers] | None = None, max_examples: int = 25,
         examples_for: Mapping[str, int] | None = None, coverage_cases: int = 40, matrix: bool = True,
         budget_s: float = 120.0, snapshot: Callable[[], Any] | None = None,
         error_message: Callable[[Any], str | None] = json_error_message,
         json_errors: Callable[[str, str], bool] = lambda _method, _path: True,
         check: Callable[[Any, Any], str | None] | None = None,
         known_good: tuple[str, str] | Callable[[Headers], None] | None = ("GET", "/api/openapi.json"),
         request_bodies: Mapping[str, Mapping[str, Any]] | None = None,
         path_values: Mapping[str, Sequence[Any]] | None = None,
         include: Iterable[str] | None = None, exclude: Iterable[str] = (),
         modes: Sequence[GenerationMode] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
         seed: int = 0, timeout_s: float = 30.0, min_per_operation: int = 5) -> FuzzReport:
    """Fuzz every operation of an ASGI ``app`` (in process) or of the server at ``base_url``.

    Args:
        headers: sent with every request (a login); a callable is called before each operation, so an
            operation that ends the session (logout) does not log the next ones out.
        max_examples: Hypothesis examples per operation (``examples_for`` overrides it per label);
            ``coverage_cases``: at most this many schemathesis coverage cases; ``matrix``: whether to
            send the hostile-value matrix.
        budget_s: wall time for the whole run, shared among the operations; past it, each operation is
            still sent its first ``min_per_operation`` cases, so every one is tried.
        snapshot: what is stored; compared before and after every call answered 4xx.
        error_message: the message of a 4xx answer, None when it has none.
        json_errors: ``(method, operation path) -> bool``; False for HTML pages, whose 4xx needs only a
            non-empty body.
        check: ``(case, response) -> problem or None``, run on every answer.
        known_good: a request that must answer 2xx after the run, with ``headers``: ``(method, path)`` or
            a callable that raises when the app is broken.
        request_bodies: bodies for operations that declare none (see :func:`load_schema`).
        path_values: known values of path parameters by name (real ids): the matrix starts from one, and
            half the generated cases use one, so the validation behind the lookup is reached too.
        include, exclude: operation labels to fuzz (all by default) or to skip.
        modes: schemathesis generation modes, valid and invalid data by default.
        seed: the base of each operation's Hypothesis seed.
    """
    started = time.monotonic()
    target = CatchErrors(app) if app is not None else None
    schema = load_schema(target, base_url=base_url, schema_path=schema_path, request_bodies=request_bodies,
                         headers=headers() if callable(headers) else headers)
    operations = [op for op in (r.ok() for r in schema.get_all_operations())
                  if (include is None or op.label in set(include)) and op.label not in set(exclude)]
    run = _Run(schema, target, snapshot, error_message, json_errors, check, min_per_operation,
               {"allow_redirects": False, "timeout": timeout_s, **({"base_url": base_url.rstrip("/")} if base_url else {})})
    deadline = started + budget_s
    reserve = budget_s / (2 * max(1, len(operations)))  # kept for each operation still to come
    for index, op in enumerate(operations):
        op_started = time.monotonic()
        later = len(operations) - index - 1
        run.begin(op, dict(headers() if callable(headers) else (headers or {})),
                  max(op_started + (deadline - op_started) / (later + 1), deadline - later * reserve))
        s = run.stats[op.label]
        try:
            for case in itertools.islice(_coverage_cases(schema, op, modes), coverage_cases):
                run.send(case)
                s.coverage += 1
            if matrix:
                for case in _matrix_cases(schema, op, path_values or {}):
                    run.send(case)
                    s.matrix += 1
            n = (examples_for or {}).get(op.label, max_examples)
            if n > 0:
                _run_hypothesis(_strategy(op, modes, path_values or {}), run.send, n,
                                zlib.crc32(f"{seed}:{op.label}".encode()))
        except _OutOfTime:
            s.truncated = True
        except hypothesis.errors.Unsatisfiable as exc:  # Hypothesis could not make valid input: say so
            s.note = f"generation stopped: {exc}"[:200]
        s.seconds = time.monotonic() - op_started

    if known_good is not None:
        run.problems.extend(_alive(target, base_url, headers, known_good, timeout_s))
    return FuzzReport(title or schema.raw_schema.get("info", {}).get("title", "API"), run.stats, run.problems,
                      time.monotonic() - started)


def _coverage_cases(schema: Any, op: Any, modes: Sequence[GenerationMode]) -> Iterable[Any]:
    generation = schema.config.generation_for(operation=op, phase="coverage")
    return schema.iter_coverage_cases(op, generation_modes=list(modes), generation_config=generation)


def _base_case(op: Any, path_values: Mapping[str, Sequence[Any]]) -> Any:
    """A minimal valid request (Hypothesis's simplest positive case), with known path values."""
    known = {p.name: list(path_values[p.name])[0] for p in op.path_parameters if p.name in path_values}
    strategy = op.as_strategy(generation_mode=GenerationMode.POSITIVE, path_parameters=known or None)
    return hypothesis.find(strategy, lambda _case: True,
                           settings=hypothesis.settings(database=None, max_examples=20, deadline=None,
                                                        suppress_health_check=list(HealthCheck)))


def _matrix_cases(schema: Any, op: Any, path_values: Mapping[str, Sequence[Any]]) -> Iterator[Any]:
    """Every parameter and top-level body field of ``op`` set to every hostile value, then hostile bodies."""
    try:
        base = _base_case(op, path_values)
    except (hypothesis.errors.NoSuchExample, hypothesis.errors.Unsatisfiable):
        return

    def variant(**changes: Any) -> Any:
        fields = {"path_parameters": dict(base.path_parameters or {}), "query": dict(base.query or {}),
                  "body": base.body, "media_type": base.media_type, **changes}
        return schema.make_case(operation=op, headers=dict(base.headers or {}), **fields)

    for p in op.path_parameters:
        for value in HOSTILE_TEXT:
            if value and "/" not in value:  # an empty segment or dot segments make another route
                yield variant(path_parameters={**base.path_parameters, p.name: value})
    for p in op.query:
        for value in HOSTILE_TEXT:
            yield variant(query={**(base.query or {}), p.name: value})
    for body in op.body:
        schema_of = body.definition.get("schema", {}) if isinstance(body.definition, dict) else {}
        props = list((schema_of.get("properties") or {}).keys())
        start = base.body if isinstance(base.body, dict) and base.media_type == body.media_type else {}
        is_json = "json" in body.media_type
        for name in props:
            for value in HOSTILE_JSON if is_json else HOSTILE_TEXT:
                data = {**start, name: value}
                if is_json:  # serialized here: NaN and Infinity as Python's json writes them, surrogates escaped
                    yield variant(body=json.dumps(data).encode(), media_type=body.media_type)
                else:
                    yield variant(body=data, media_type=body.media_type)
        for raw in HOSTILE_BODIES:
            yield variant(body=raw, media_type=body.media_type)


def _strategy(op: Any, modes: Sequence[GenerationMode], path_values: Mapping[str, Sequence[Any]]) -> Any:
    strategies = [op.as_strategy(generation_mode=mode) for mode in modes]
    names = [p.name for p in op.path_parameters if p.name in path_values]
    if names:
        known = st.fixed_dictionaries({n: st.sampled_from(list(path_values[n])) for n in names})
        strategies += [known.flatmap(lambda values, mode=mode: op.as_strategy(generation_mode=mode,
                                                                               path_parameters=values))
                       for mode in modes]
    return st.one_of(strategies)


def _run_hypothesis(strategy: Any, send: Callable[[Any], None], max_examples: int, seed: int) -> None:
    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                         phases=(Phase.generate,), suppress_health_check=list(HealthCheck),
                         verbosity=hypothesis.Verbosity.quiet, print_blob=False)
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        send(case)

    run()


def _describe(case: Any, response: Any | None = None) -> str:
    """METHOD path?query [body] as sent (from the response's request when there is one)."""
    req = getattr(response, "request", None)
    if req is not None:
        body = req.body.decode("utf-8", "replace") if isinstance(req.body, bytes) else (req.body or "")
        url = req.url.split("://", 1)[-1]
        url = url[url.find("/"):] if "/" in url else url
        shown = f"{body[:200]!r}" + (f"... ({len(body)} characters)" if len(body) > 200 else "")
        text = f"{req.method} {url[:300]}" + (f" body={shown}" if body else "")
        ctype = req.headers.get("content-type")
        return text + (f" ({ctype})" if body and ctype else "")
    body = "" if case.body is None or type(case.body).__name__ == "NotSet" else f" body={str(case.body)[:300]!r}"
    query = f" query={case.query}" if case.query else ""
    return f"{case.method} {case.formatted_path}{query}{body}"


class _Run:
    """The state of one :func:`fuzz` run: counts, problems, the last snapshot."""

    def __init__(self, schema: Any, target: CatchErrors | None, snapshot: Callable[[], Any] | None,
                 error_message: Callable[[Any], str | None], json_errors: Callable[[str, str], bool],
                 check: Callable | None, min_sent: int, call_kwargs: dict[str, Any]) -> None:
        self.schema, self.target, self.snapshot = schema, target, snapshot
        self.error_message, self.json_errors, self.check = error_message, json_errors, check
        self.min_sent, self.call_kwargs = min_sent, call_kwargs
        self.stats: dict[str, OperationStats] = {}
        self.problems: list[Problem] = []
        self.stored: Any = None

    def begin(self, op: Any, headers: dict[str, str], deadline: float) -> None:
        self.current = self.stats.setdefault(op.label, OperationStats(op.label))
        self.headers, self.deadline = headers, deadline
        self.stored = self.snapshot() if self.snapshot else None

    def send(self, case: Any) -> None:
        s = self.current
        if time.monotonic() > self.deadline and s.examples + s.unsendable >= self.min_sent:
            raise _OutOfTime()
        if self.target is not None:
            self.target.raised = None
        try:
            response = case.call(headers=self.headers, **self.call_kwargs)
        except (UnicodeError, ValueError, TypeError, requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader):
            s.unsendable += 1  # the HTTP client refused to encode it: nothing reached the app
            return
        except requests.RequestException as exc:  # a server that does not answer (base_url runs)
            s.examples += 1
            s.by_status[0] += 1
            s.problems += 1
            self.problems.append(Problem(s.label, "no answer", _describe(case), None, "", f"{type(exc).__name__}: {exc}"[:500]))
            return
        s.examples += 1
        status = response.status_code
        s.by_status[status] += 1
        found: list[Problem] = []
        answer = response.text_lossy()[:300]

        def problem(kind: str, detail: str = "") -> None:
            found.append(Problem(s.label, kind, _describe(case, response), status, answer, detail))

        raised = self.target.raised if self.target is not None else None
        if status >= 500:
            problem("5xx", f"the app raised {type(raised).__name__}: {raised}"[:500] if raised else "")
        else:
            try:
                case.validate_response(response, checks=[not_a_server_error], headers=self.headers)
            except (AssertionError, BaseExceptionGroup) as exc:  # a schemathesis Failure or FailureGroup
                problem("5xx", str(exc)[:300])
        if 400 <= status < 500:
            if self.json_errors(case.method.upper(), case.operation.path):
                if self.error_message(response) is None:
                    problem("unclear error", "a refusal must be JSON with a non-empty message")
            elif not response.content.strip():
                problem("unclear error", "a refused page must say why")
        if self.snapshot is not None:
            after = self.snapshot()
            if 400 <= status < 500 and after != self.stored:
                problem("refused but changed state", snapshot_diff(self.stored, after))
            self.stored = after
        if self.check is not None:
            detail = self.check(case, response)
            if detail:
                problem("check", detail)
        s.problems += len(found)
        self.problems.extend(found)


def _alive(target: Any, base_url: str | None, headers: Any,
           known_good: tuple[str, str] | Callable[[Headers], None], timeout_s: float) -> list[Problem]:
    sent = dict(headers() if callable(headers) else (headers or {}))
    if callable(known_good):
        try:
            known_good(sent)
        except Exception as exc:
            return [Problem("known-good request", "not alive", "(callable)", None, "", f"{type(exc).__name__}: {exc}")]
        return []
    method, path = known_good
    try:
        if target is not None:
            from schemathesis.python import asgi

            target.raised = None
            with asgi.get_client(target) as client:
                resp = client.request(method, path, headers=sent, allow_redirects=False, timeout=timeout_s)
        else:
            resp = requests.request(method, base_url.rstrip("/") + path, headers=sent, allow_redirects=False,
                                    timeout=timeout_s)
    except Exception as exc:
        return [Problem("known-good request", "not alive", f"{method} {path}", None, "", f"{type(exc).__name__}: {exc}")]
    if not 200 <= resp.status_code < 300:
        return [Problem("known-good request", "not alive", f"{method} {path}", resp.status_code, resp.text[:300])]
    return []


__all__ = ["fuzz", "load_schema", "FuzzReport", "OperationStats", "Problem", "CatchErrors", "json_error_message",
           "sqlite_snapshot", "snapshot_diff", "HOSTILE_TEXT", "HOSTILE_JSON", "HOSTILE_BODIES", "JSON_BODY",
           "FORM_BODY"]
