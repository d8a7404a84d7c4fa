"""LLM-written QA pairs over chunks, as Ray Data jobs.

Two modes (``data.generation.mode``):

* ``answer_first`` (the default, what a 135M model can do): answer passages are picked from the
  chunk by rule (:func:`answer_passages`: whole sentences that read as an answer, so the answer is
  grounded by construction) and the model is asked only for the question each one answers. With
  guided decoding the reply is held to a question pattern (vLLM's ``structured_outputs`` regex).
* ``pairs``: the model writes question and answer (``prompt_style`` labelled or json); with
  guided decoding a JSON reply is held to a JSON schema through ``response_format``.

Backends (``data.generation.backend``):

* ``serve`` / ``http``: :class:`app.endpoint.ChatRequester`, a Ray Data actor that sends each row's chat request
  to an OpenAI-compatible ``/chat/completions`` endpoint (the project's own Serve app, or any
  provider by URL and key), several in flight per actor. Retries (408/429/5xx, connection errors,
  timeouts) with exponential backoff; a request that still fails becomes a row with its reason,
  never an exception: one bad request must not abort the dataset (Ray 2.60's HTTP stage raises
  after its retries, which killed whole builds).
* ``vllm``: ray.data.llm's vLLM processor, the engine inside the Ray Data job (GPU clusters).

Model output is parsed leniently (:func:`parse_pairs`): a JSON object or list anywhere in the text,
else ``Question:/Answer:/Evidence:`` lines; what cannot be parsed is rejected with its reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from app.data.config import GenerationConfig
from app.data.extract import NOT_VERBS, base_verb, statement_question
from app.data.formats import fence_state
from app.datasets import normalize_text, pair_id

# Deferred imports: ray is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

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


def sentence_spans(text: str) -> list[tuple[int, int]]:
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
    spans = sentence_spans(chunk)
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


# -- stop strings --------------------------------------------------------------------------------


def stop_strings(n: int, style: str) -> list[str]:
    """Small models repeat the pair until max_tokens; for one labelled pair, a second one ends it."""
    return ["\nQuestion:", "\nQUESTION:"] if style == "labelled" and n == 1 else []


# -- answer-first generation -------------------------------------------------------------------

QUESTION_PROMPT = "{text}\n\nAnswer: {answer}\n\nWrite the question about {subject} that is answered by the answer above."
PAIRS_SCHEMA = {"type": "array", "minItems": 1, "items": {
    "type": "object", "additionalProperties": False, "required": ["question", "answer", "evidence"],
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}, "evidence": {"type": "string"}}}}
LABELLED_REGEX = r"Question: [^\n]{10,200}\?\nAnswer: [^\n]{8,600}"

_CONNECTIVE = re.compile(r"^(?:However|But|And|Also|So|Thus|Then|This|That|These|Those|It|Its|They|Their|Here|There|"
                         r"Such|Otherwise|Instead|Similarly|In this case|In that case|For example|Note|See|E\.g\.|"
                         r"Likewise|Moreover|Furthermore|Therefore|Hence|Alternatively|Finally|First|Second|Next)\b")
_ANSWERISH = re.compile(r"\b(?:is|are|was|can|cannot|will|must|should|may|does|do|means|allows?|lets?|uses?|"
                        r"returns?|creates?|shows?|makes?|sets?|tells?|causes?|prevents?|requires?|defaults?)\b")


def answer_passages(text: str, limit: int, min_words: int = 8, max_words: int = 60, guided: bool = True) -> list[str]:
    """Up to ``limit`` sentences of ``text`` that read as an answer on their own, spread over the text.

    Prose only (no headings, code, lists, tables); a whole sentence of ``min_words``..``max_words``
    words that starts like a statement (a capital, not a connective or pronoun that needs the sentence
    before it) and says something (a verb of the answering kind), and that the statement extractor
    cannot already turn into a question by rule. Each is an exact slice of ``text``.
    """
    candidates: list[tuple[float, int, str]] = []
    fence, offset = "", 0
    for block in re.split(r"(\n\s*\n)", text):
        lines = block.split("\n")
        in_code = False
        for line in lines:
            after = fence_state(line, fence)
            in_code = in_code or bool(fence or after)
            fence = after
        first = block.lstrip()
        if in_code or not first or first.startswith(("#", "|", "<", ">", "    ", "\t", "- ", "* ", "+ ", ": ", "```", "~~~")) \
                or re.match(r"\d+[.)] ", first):
            offset += len(block)
            continue
        for s_start, s_end in sentence_spans(block):
            sent = " ".join(block[s_start:s_end].split())
            words = sent.split()
            if not (min_words <= len(words) <= max_words) or not sent[0].isupper() or _CONNECTIVE.match(sent) \
                    or not sent.endswith((".", "!")):
                continue
            if statement_question(sent) or (guided and not question_guide(sent)):
                continue  # the statement extractor asks it by rule already / nothing to anchor a question on
            named = len(re.findall(r"`[^`]+`|\b[A-Z][a-z]+[A-Z]\w*|\b\w+\(\)|--?[a-z][\w-]+", sent))
            if not guided and not named and not _ANSWERISH.search(sent.lower()):
                continue
            candidates.append((1.0 + 0.5 * min(named, 2) - abs(len(words) - 22) / 40, offset + s_start, sent))
        offset += len(block)
    if not candidates:
        return []
    # The best ones, then put back in reading order; ties keep earlier sentences.
    best = sorted(candidates, key=lambda c: (-c[0], c[1]))[:limit]
    return [c[2] for c in sorted(best, key=lambda c: c[1])]


# A noun phrase (after an article, or a code span, or a capitalized name) and its verb: an imperative
# ("Print all commits ...") has no subject to ask about.
_SUBJECT = re.compile(r"^(?:(?:The|A|An) ((?:`[^`]+`|[\w<>.:/-]+)(?: (?:`[^`]+`|[\w<>.:/-]+)){0,3}?)"
                      r"|(`[^`]+`(?: [a-z][\w-]*){0,2}?|[A-Z][\w.-]*(?: [a-z][\w-]*){0,2}?)) "
                      r"(is|are|can|cannot|will|must|should|may|does|do|[a-z]{3,}s)\b")
_CONDITION = re.compile(r"^(If|When|Unless|Without|With) ")
_PRONOUN_START = re.compile(r"^(?:You|We|I|It|They|He|She|This|These|That|Those|There|Here|One)\b")
_MODALS = {"is", "are", "can", "cannot", "will", "must", "should", "may", "does", "do"}


_FUNCTION_WORDS = ("the", "a", "an", "of", "to", "in", "for", "with", "on", "by", "from", "when", "if", "and", "or",
                   "not", "it", "its", "is", "are", "be", "used", "use", "do", "does", "which", "that", "this", "git")


def _vocabulary(answer: str, limit: int = 48) -> str:
    """A regex alternation of the words a question about ``answer`` may use: the answer's own words
    (and code spans, whole) plus a few function words."""
    words: list[str] = []
    for w in re.findall(r"`[^`\n]{1,40}`|[A-Za-z][\w.<>/-]*[\w>]|[A-Za-z]", answer):
        w = w.rstrip(".")
        if re.fullmatch(r"[A-Za-z][a-z]{3,}s", w) and not w.endswith("ss"):  # "replaces": the question says "replace"
            words.append(base_verb(w.lower()))
        if w and w.lower() not in (x.lower() for x in words):
            words.append(w if w.startswith("`") or not w[0].isupper() or w.isupper() or re.search(r"[A-Z]", w[1:])
                         else w.lower())
    words = words[:limit] + [f for f in _FUNCTION_WORDS if f not in words]
    return "(" + "|".join(re.escape(w) for w in sorted(set(words), key=lambda x: (-len(x), x))) + ")"


def question_guide(answer: str) -> str:
    """The pattern the question to ``answer`` must match: anchored on what the answer is about, in
    the answer's own words; "" when the sentence has no subject or condition to anchor on.

    A small model asked freely for "the question this sentence answers" writes questions about
    anything, or garbles names. Held to the sentence's subject ("What does the `--amend` option
    ...?") or its condition ("What happens if ...?"), and to words the answer itself uses, it can
    only choose and order them: the question is grounded by construction.
    """
    vocab = _vocabulary(answer)
    words = lambda lo, hi: f"( {vocab}){{{lo},{hi}}}"  # noqa: E731 - a pattern, not logic
    if _CONDITION.match(answer):
        return rf"What happens (if|when|unless|without|with){words(2, 14)}\?"
    m = _SUBJECT.match(answer)
    if m and not _CONNECTIVE.match(answer) and not _PRONOUN_START.match(answer) and (m.group(3) in _MODALS or m.group(3) not in NOT_VERBS):
        subject, verb = m.group(1) or m.group(2), m.group(3)
        if not m.group(1) and verb not in _MODALS and not (subject.startswith("`") or re.search(r"[A-Z]", subject[1:])):
            return ""  # "Print all commits ..." or "Callers provide ...": no article, code or name to anchor on
        first, _, rest = subject.partition(" ")
        if not (first.startswith("`") or first.isupper() or re.search(r"[A-Z]", first[1:])):
            subject = (first[0].lower() + first[1:] + (" " + rest if rest else "")).strip()  # "A" (a name) stays
        article = r"(the |a |an )?"
        if verb in ("is", "are"):
            return rf"(What|Which|Why|When|How) {verb} {article}{re.escape(subject)}{words(0, 8)}\?"
        aux = ("can" if verb == "cannot" else verb) if verb in _MODALS else "does"  # "replaces" -> "does ... replace"
        return rf"(What|Which|Why|When|How) {aux} {article}{re.escape(subject)}{words(1, 8)}\?"
    # A sentence with neither: measured on git-doc, guides anchored on a key term or on nothing gave
    # about 1 right question in 10 (subject and condition anchors about 5 in 8), so none is asked.
    return ""


def subject_of(chunk: dict[str, Any]) -> str:
    """What questions about this chunk should name: its document's title without man-page numbers."""
    title = re.sub(r"\(\d\)|\bManual Page\b", "", chunk.get("doc_title") or "").strip(" -:")
    return title or "this topic"


def question_messages(chunk: dict[str, Any], answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTION_PROMPT.format(text=chunk["text"], answer=answer, subject=subject_of(chunk))}]


def parse_questions(text: str) -> list[str]:
    """The distinct questions in the model's reply, in order (one per candidate with guided decoding)."""
    if not text or not text.strip():
        raise ParseError("empty output")
    try:
        value = json.loads(text)
        if isinstance(value, dict) and isinstance(value.get("question"), str):
            text = value["question"]
    except ValueError:
        pass
    found, seen = [], set()
    for m in re.finditer(r"[A-Z][^?\n]{5,300}\?", text.replace("Question:", "\n")):
        q = " ".join(m.group(0).split())
        if normalize_text(q) not in seen:
            seen.add(normalize_text(q))
            found.append(q)
    if not found:
        raise ParseError(f"no question found in output: {text.strip()[:120]!r}")
    return found


def parse_question(text: str) -> str:
    """The first question in the model's reply."""
    return parse_questions(text)[0]


def question_rows(request: dict[str, Any], output: str, error: str, origin: str) -> list[dict[str, Any]]:
    """The rows of one answer-first request: one pair per candidate question (the quality checks keep
    the one that points at its answer best), or one rejected row saying what went wrong."""
    base = {k: request[k] for k in ("doc_id", "doc_path", "doc_title", "section", "chunk_id", "topic")}
    base.update(context=request["text"], generator="llm_question", origin=origin, evidence=request["answer"],
                answer=request["answer"], raw_output=output[:2000], evidence_from="passage")
    if error:
        return [{**base, "pair_id": pair_id("llm_question", request["chunk_id"], "!error " + request["answer"]),
                 "question": "", "parse_error": f"request failed: {error}"}]
    try:
        questions = parse_questions(output)
    except ParseError as exc:
        return [{**base, "pair_id": pair_id("llm_question", request["chunk_id"], "!unparsed " + request["answer"]),
                 "question": "", "parse_error": f"malformed model output: {exc}"}]
    return [{**base, "pair_id": pair_id("llm_question", request["doc_id"], q), "question": q, "parse_error": ""}
            for q in questions]


def question_row(request: dict[str, Any], output: str, error: str, origin: str) -> dict[str, Any]:
    """The first row of :func:`question_rows` (one candidate)."""
    return question_rows(request, output, error, origin)[0]


# -- requests ------------------------------------------------------------------------------------


def plan_requests(chunk: dict[str, Any], g: GenerationConfig, model: str) -> list[dict[str, Any]]:
    """The chat requests for one chunk, each with ``key``: a hash of everything that decides its
    answer (model, messages, sampling, guidance), so a cached answer is reused only for the same request."""
    guide: dict[str, Any] = {}
    guides: list[str] = []
    if g.mode == "answer_first":
        items = [(question_messages(chunk, a), a)
                 for a in answer_passages(chunk["text"], g.answers_per_chunk, guided=g.guided)]
        guides = [question_guide(a) if g.guided else "" for _, a in items]
        stop: list[str] = ["\n"]
        max_tokens = min(g.max_tokens, 64)
    else:
        items = [(build_messages(chunk, g.pairs_per_chunk, g.prompt_style), "")]
        stop = stop_strings(g.pairs_per_chunk, g.prompt_style)
        max_tokens = g.max_tokens
        if g.guided and g.prompt_style == "json":
            guide = {"response_format": {"type": "json_schema", "json_schema": {"name": "qa_pairs", "schema": PAIRS_SCHEMA}}}
        elif g.guided and g.pairs_per_chunk == 1:
            guide = {"structured_outputs": {"regex": LABELLED_REGEX}}
    out = []
    for i, (messages, answer) in enumerate(items):
        if guides and guides[i]:
            guide = {"structured_outputs": {"regex": guides[i]}}
        body = {"model": model, "messages": messages, "temperature": g.temperature, "max_tokens": max_tokens,
                "seed": 0, **({"stop": stop} if stop else {}), **guide}
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]
        out.append({"key": key, "chunk_id": chunk["chunk_id"], "answer": answer, "body": json.dumps(body)})
    return out


def vllm_processor(g: GenerationConfig, model_path: str, engine_kwargs: dict[str, Any], use_gpu: bool) -> Any:
    """ray.data.llm's vLLM processor over planned requests (rows with ``key`` and ``body``)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    kwargs: dict[str, Any] = {}
    if not use_gpu:  # Ray asks for a GPU per engine unless given a placement group (Ray 2.60)
        kwargs["placement_group_config"] = {"bundles": [{"CPU": 1}]}
        kwargs.update(chat_template_stage={"num_cpus": 0.1}, tokenize_stage=False, detokenize_stage=False)
    config = vLLMEngineProcessorConfig(
        model_source=model_path, batch_size=g.batch_size, concurrency=g.concurrency,
        engine_kwargs=engine_kwargs, should_continue_on_error=True, **kwargs)

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        body = json.loads(row["body"])
        params = {k: body[k] for k in ("temperature", "max_tokens", "seed", "stop", "n") if k in body}
        if "structured_outputs" in body:
            params["structured_outputs"] = body["structured_outputs"]
        elif "response_format" in body:
            params["structured_outputs"] = {"json": body["response_format"]["json_schema"]["schema"]}
        return {"messages": body["messages"], "sampling_params": params}

    def post(row: dict[str, Any]) -> dict[str, Any]:
        error = row.get("__inference_error__") or ""
        return {"key": row["key"], "output": row.get("generated_text") or "", "error": str(error)}

    return build_processor(config, preprocess=pre, postprocess=post)
