"""LLM-written QA pairs over chunks, batched with ray.data.llm.

Backends (``data.generation.backend``):

* ``serve`` / ``http``: ray.data.llm's HTTP processor against an OpenAI-compatible
  ``/chat/completions`` endpoint (the project's own Serve app, or any provider by URL and key).
  Ray 2.60's HTTP stage raises on a non-JSON body and loses the status of a JSON error body, so
  the aiohttp session it uses gets :class:`TolerantResponse`: every answer becomes a dict, an
  error one carrying its status and body, and a bad row is rejected with that reason instead of
  failing the job. Retries (408/429/5xx, connection errors), backoff, rate and timeout are config.
* ``vllm``: ray.data.llm's vLLM processor, the engine inside the Ray Data job (GPU clusters).

Model output is parsed leniently (:func:`parse_pairs`): a JSON object or list anywhere in the text,
else ``Question:/Answer:/Evidence:`` lines; what cannot be parsed is rejected with its reason.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import aiohttp

from app.config import GenerationConfig
from app.data.schema import normalize_text, pair_id

SYSTEM_PROMPT = "You write question-answer pairs for a study set about technical documentation."

# Two prompt styles. `labelled` is what a 135M model follows: the passage first, no system prompt,
# no title line (measured on SmolLM2-135M: with those it answered "The text is about ..." instead of
# a question; a few-shot example was copied verbatim; the JSON prompt was answered by echoing the
# passage). Capable models get `json`, which also asks for the evidence span.
PROMPTS = {
    "labelled": (
        "{text}\n\n"
        "Write {n_questions} about the text above, then answer {them} using the text.\n"
        "Format:\nQuestion: ...\nAnswer: ..."
    ),
    "json": (
        'Text from "{title}" ({section}):\n"""\n{text}\n"""\n\n'
        "Write {n_questions} that this text answers. Each question must make sense on its own, without "
        "the text: name the thing it asks about. Answer in one or two sentences using only the text, "
        "and copy the exact sentence of the text that supports the answer.\n"
        'Reply with JSON only: [{{"question": "...", "answer": "...", "evidence": "..."}}]'
    ),
}


def build_messages(chunk: dict[str, Any], n: int, style: str) -> list[dict[str, str]]:
    words = "a question" if n == 1 else f"{n} different questions"
    user = PROMPTS[style].format(title=chunk["doc_title"], section=chunk["section"] or chunk["doc_title"],
                                 text=chunk["text"], n_questions=words, them="it" if n == 1 else "each")
    if style == "labelled":
        return [{"role": "user", "content": user}]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# -- parsing and repair ------------------------------------------------------------------------

_LABEL = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:\*\*)?\s*(question|q|answer|a|evidence)\s*(?:\d+)?\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?",
                    re.IGNORECASE)


class ParseError(ValueError):
    """Model output from which no QA pair could be recovered."""


def _json_candidates(text: str) -> list[Any]:
    """JSON values found in text: the whole text, a fenced block, or the first balanced [...] / {...}."""
    out = []
    cleaned = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    for start_char in ("[", "{"):
        i = cleaned.find(start_char)
        while i != -1:
            try:
                value, _ = json.JSONDecoder().raw_decode(cleaned[i:])
                out.append(value)
                break
            except ValueError:
                i = cleaned.find(start_char, i + 1)
    return out


def _from_json(value: Any) -> list[dict[str, str]]:
    items = value if isinstance(value, list) else [value]
    if isinstance(value, dict):
        for key in ("pairs", "questions", "qa_pairs", "items"):
            if isinstance(value.get(key), list):
                items = value[key]
    pairs = []
    for item in items:
        if not isinstance(item, dict):
            continue
        low = {str(k).lower(): v for k, v in item.items()}
        q, a = low.get("question") or low.get("q"), low.get("answer") or low.get("a")
        if isinstance(q, str) and isinstance(a, str):
            ev = low.get("evidence") or low.get("evidence_span") or ""
            pairs.append({"question": q.strip(), "answer": a.strip(), "evidence": ev.strip() if isinstance(ev, str) else ""})
    return pairs


def _from_labels(text: str) -> list[dict[str, str]]:
    pairs: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    field = None
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m:
            label = m.group(1).lower()
            field = {"q": "question", "a": "answer"}.get(label, label)
            rest = line[m.end():].strip()
            if field == "question":
                if current and current.get("answer"):
                    pairs.append(current)
                current = {"question": rest, "answer": "", "evidence": ""}
            elif current is not None:
                current[field] = rest
            continue
        if current is not None and field and line.strip():
            current[field] = (current[field] + " " + line.strip()).strip()
        elif current is not None and field == "answer" and not line.strip() and current["answer"]:
            field = None  # a blank line ends a multi-line answer; trailing chatter is dropped
    if current and current.get("answer"):
        pairs.append(current)
    return pairs


def parse_pairs(text: str) -> list[dict[str, str]]:
    """QA pairs from model output, deduplicated in order; ParseError says why when there are none."""
    if not text or not text.strip():
        raise ParseError("empty output")
    pairs: list[dict[str, str]] = []
    for value in _json_candidates(text):
        pairs = _from_json(value)
        if pairs:
            break
    if not pairs:
        pairs = _from_labels(text)
    seen, unique = set(), []
    for p in pairs:
        p = {k: re.sub(r"\s+", " ", v).strip().strip('"').strip() for k, v in p.items()}
        key = normalize_text(p["question"])  # the same key pair ids use
        if p["question"] and p["answer"] and key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise ParseError(f"no question/answer found in output: {text.strip()[:120]!r}")
    return unique


def _sentences(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in re.finditer(r"(?<=[.!?:])\s+(?=[A-Z\"'`(])|\n\s*\n", text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


_WORD = re.compile(r"[a-z0-9_]+")


def locate_evidence(chunk: str, answer: str, claimed: str = "") -> tuple[str, str]:
    """The chunk passage that supports an answer, as an exact slice of the chunk, and how it was found.

    A claimed evidence string found verbatim (whitespace-insensitive) wins ("model"); otherwise the
    sentence (or two adjacent ones) sharing most words with answer + claim ("matched").
    """
    if claimed:
        pattern = r"\s+".join(re.escape(w) for w in claimed.split())
        m = re.search(pattern, chunk) if pattern else None
        if m:
            return m.group(0), "model"
    target = set(_WORD.findall((answer + " " + claimed).lower()))
    if not target:
        return "", "none"
    spans = _sentences(chunk)
    candidates = spans + [(a[0], b[1]) for a, b in zip(spans, spans[1:])]
    best, best_score = None, 0.0
    for s, e in candidates:
        words = set(_WORD.findall(chunk[s:e].lower()))
        score = len(words & target) / (len(target) ** 0.5 * max(len(words), 1) ** 0.5)
        if score > best_score:
            best, best_score = (s, e), score
    if best is None:
        return "", "none"
    return chunk[best[0]:best[1]].strip(), "matched"


def pairs_from_output(chunk: dict[str, Any], output: str, error: str, origin: str) -> list[dict[str, Any]]:
    """Rows for one chunk's model output: parsed pairs, or one rejected row saying what went wrong."""
    base = {k: chunk[k] for k in ("doc_id", "doc_path", "doc_title", "section", "chunk_id", "topic")}
    base.update(context=chunk["text"], generator="llm", origin=origin)
    if error:
        return [{**base, "pair_id": pair_id("llm", chunk["chunk_id"], "!error"), "question": "", "answer": "",
                 "evidence": "", "raw_output": output[:2000], "parse_error": f"request failed: {error}"}]
    try:
        parsed = parse_pairs(output)
    except ParseError as exc:
        return [{**base, "pair_id": pair_id("llm", chunk["chunk_id"], "!unparsed"), "question": "", "answer": "",
                 "evidence": "", "raw_output": output[:2000], "parse_error": f"malformed model output: {exc}"}]
    rows = []
    for p in parsed:
        evidence, how = locate_evidence(chunk["text"], p["answer"], p["evidence"])
        rows.append({**base, "pair_id": pair_id("llm", chunk["doc_id"], p["question"]), "question": p["question"],
                     "answer": p["answer"], "evidence": evidence, "raw_output": output[:2000],
                     "parse_error": "", "evidence_from": how})
    return rows


# -- ray.data.llm processors -------------------------------------------------------------------


def stop_strings(n: int, style: str) -> list[str]:
    """Small models repeat the pair until max_tokens; for one labelled pair, a second one ends it."""
    return ["\nQuestion:", "\nQUESTION:"] if style == "labelled" and n == 1 else []


class TolerantResponse(aiohttp.ClientResponse):
    """An aiohttp response whose ``json()`` never raises and keeps the HTTP status of errors.

    Ray's HTTP stage calls ``response.json()`` on every non-retryable answer; a proxy's HTML error
    page or a truncated body would otherwise fail the whole Ray Data job.
    """

    async def json(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - same signature as aiohttp's
        text = await self.text(errors="replace")
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        if self.status != 200 or not isinstance(body, dict):
            return {"error": {"status": self.status, "body": text[:500] or "(empty body)"}}
        return body


def _session_factory(timeout_s: float) -> Any:
    return functools.partial(aiohttp.ClientSession, timeout=aiohttp.ClientTimeout(total=timeout_s),
                             response_class=TolerantResponse)


def response_text(response: Any) -> tuple[str, str]:
    """(content, error) from an OpenAI chat completion body as the HTTP stage returns it."""
    if not isinstance(response, dict):
        return "", f"no response body ({type(response).__name__})"
    if response.get("error"):
        err = response["error"]
        return "", f"endpoint error: {json.dumps(err, default=str)[:300]}"
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return "", f"unexpected response shape: {json.dumps(response, default=str)[:300]}"
    return content or "", "" if content else "empty completion"


def http_processor(g: GenerationConfig, base_url: str, model: str, style: str, api_key: str | None) -> Any:
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    from app.serving.manager import bearer

    config = HttpRequestProcessorConfig(
        url=base_url.rstrip("/") + "/chat/completions", headers=bearer(api_key), batch_size=g.batch_size,
        concurrency=g.concurrency, qps=g.qps, max_retries=g.max_retries,
        base_retry_wait_time_in_s=g.retry_wait_s, session_factory=_session_factory(g.timeout_s),
        http_request_stage={"num_cpus": 0.1},  # I/O bound: the engine needs the cores
    )
    n, temperature, max_tokens = g.pairs_per_chunk, g.temperature, g.max_tokens

    stop = stop_strings(n, style)

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        payload = {"model": model, "messages": build_messages(row, n, style), "temperature": temperature,
                   "max_tokens": max_tokens, "seed": 0}
        return {"payload": {**payload, "stop": stop} if stop else payload}

    def post(row: dict[str, Any]) -> dict[str, Any]:
        content, error = response_text(row.get("http_response"))
        return {"chunk_id": row["chunk_id"], "output": content, "error": error}

    return build_processor(config, preprocess=pre, postprocess=post)


def vllm_processor(g: GenerationConfig, model_path: str, style: str, engine_kwargs: dict[str, Any],
                   use_gpu: bool) -> Any:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    kwargs: dict[str, Any] = {}
    if not use_gpu:  # Ray asks for a GPU per engine unless given a placement group (Ray 2.60)
        kwargs["placement_group_config"] = {"bundles": [{"CPU": 1}]}
        kwargs.update(chat_template_stage={"num_cpus": 0.1}, tokenize_stage=False, detokenize_stage=False)
    config = vLLMEngineProcessorConfig(
        model_source=model_path, batch_size=g.batch_size, concurrency=g.concurrency,
        engine_kwargs=engine_kwargs, should_continue_on_error=True, **kwargs)
    n, temperature, max_tokens = g.pairs_per_chunk, g.temperature, g.max_tokens

    stop = stop_strings(n, style)

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        params = {"temperature": temperature, "max_tokens": max_tokens, "seed": 0}
        return {"messages": build_messages(row, n, style), "sampling_params": {**params, "stop": stop} if stop else params}

    def post(row: dict[str, Any]) -> dict[str, Any]:
        error = row.get("__inference_error__") or ""
        return {"chunk_id": row["chunk_id"], "output": row.get("generated_text") or "", "error": str(error)}

    return build_processor(config, preprocess=pre, postprocess=post)
