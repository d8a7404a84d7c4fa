"""Correctness gate: a served engine must give the greedy answers of its model's float32 reference.

A serving setting can be fast and wrong (a wrong RoPE base, a broken kernel, a bad quantization):
it still answers, quickly, with nonsense. The gate asks every served model a fixed set of prompts
greedily, one at a time and then all at once, and compares the answers with the Hugging Face
transformers float32 greedy answers of the same checkpoint. The reference is computed once per model
fingerprint and kept in the model store beside the model (``<store>/<name>/gate_reference.json``): for
an 8B model it is a 32 GB load, not something to repeat at every deploy.

What "agree" means. Low precision legitimately changes greedy answers where the float32 model
itself is at a near tie: SmolLM2's first token for "What is the capital of France?" is 'The' at
25.36 vs 'L' at 25.26, a gap under bf16's resolution at that size (0.125), and a correct bf16 engine
may answer "L'Étoile, la Marseillaise..." (benchmarks/bf16_tie_repro.py shows it). So the reference
is trusted only up to its first near tie (top-2 logit gap < NEAR_TIE); a served answer is cut to the
trusted prefix's length and compared with it, as a word-LCS F-measure (ROUGE-L) with the prompt's own
words left out (an engine that echoes the question shares them all). Prompts that tie within their
first MIN_TRUSTED_TOKENS tokens are reported but not counted. A model passes when at least
``min_agreeing`` of the counted prompts reach ``min_similarity``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx

from app.errors import AppError
from app.model_store import ModelStore, StoredModel, model_fingerprint

# Deferred imports: torch, transformers are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

REFERENCE_FILE = "gate_reference.json"
REFERENCE_VERSION = 2

# Short questions with one plain answer, a list, arithmetic, a translation, and one longer prompt
# that exercises prefill past a few hundred tokens (attention paths differ by sequence length).
GATE_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "What is the capital of Japan?",
    "How many days are there in a week?",
    "Name the three primary colors.",
    "What does a thermometer measure?",
    "What is 12 plus 7?",
    "Translate 'good morning' into Spanish.",
    "Write one sentence about the ocean.",
    "Read this passage and say in one sentence what it is about.\n\n"
    + " ".join(
        "The river rises in the northern hills, where snow melts every spring and feeds a chain of small "
        "lakes. From there it flows south through farmland, past three market towns and an old mill, "
        "before it reaches the sea at a wide estuary where birds gather in winter."
        for _ in range(4)
    ),
)

_WORD = re.compile(r"\w+", re.UNICODE)
# Top-2 logit gaps below this are ties that bf16 cannot resolve (its spacing near a logit of 25 is 0.125).
NEAR_TIE = 0.15
MIN_TRUSTED_TOKENS = 4
MIN_COUNTED = 4


class GateError(AppError, RuntimeError):
    """A served model's answers do not agree with its reference; the message names the setting."""


@dataclass(frozen=True)
class Thresholds:
    """When an answer agrees with its reference, and how many must agree for a model to pass."""

    min_similarity: float
    min_agreeing: float


@dataclass
class GateResult:
    model: str
    passed: bool
    agreeing: int
    total: int
    mean_similarity: float
    thresholds: Thresholds
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        ties = len(self.rows) - self.total
        return (f"{self.model}: {self.agreeing}/{self.total} gate answers agree with the float32 reference "
                f"(word LCS F >= {self.thresholds.min_similarity:g}; needed {self.needed}"
                + (f"; {ties} near-tie prompt{'s' if ties > 1 else ''} not counted" if ties else "")
                + f"), mean similarity {self.mean_similarity:.2f}")

    @property
    def needed(self) -> int:
        return needed(self.total, self.thresholds)

    def worst(self, n: int = 2) -> list[dict[str, Any]]:
        return sorted((r for r in self.rows if r.get("counted", True)), key=lambda r: r["similarity"])[:n]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)), answers are short)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def similarity(answer: str, reference: str, prompt: str = "") -> float:
    """ROUGE-L F-measure on lower-cased words; 1.0 when both are empty.

    With ``prompt``, words of the prompt are left out of both sides first (unless that leaves the
    reference empty): an engine that echoes "The capital of Japan?" shares most words with "The
    capital of Japan is Tokyo." but none of what the answer adds to the question.
    """
    a, r = words(answer), words(reference)
    if prompt:
        asked = set(words(prompt))
        new_r = [w for w in r if w not in asked]
        if new_r:
            a, r = [w for w in a if w not in asked], new_r
    if not a and not r:
        return 1.0
    lcs = lcs_length(a, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(a), lcs / len(r)
    return 2 * p * rec / (p + rec)


def needed(total: int, t: Thresholds) -> int:
    return max(1, math.ceil(t.min_agreeing * total - 1e-9))


def judge(model: str, answers: Sequence[str], reference: dict[str, Any], t: Thresholds) -> GateResult:
    """Compare served answers (in the order of ``reference['prompts']``) with the reference.

    Where the reference has trusted prefixes (see compute_reference), each served answer is cut to
    the trusted prefix's length in words and compared with it; a prompt whose trusted prefix is
    shorter than MIN_TRUSTED_TOKENS (a near tie at the very start, like the France question's first
    token) is reported but not counted. When fewer than MIN_COUNTED prompts would count, every prompt
    counts on its whole answer.
    """
    prompts, refs = reference["prompts"], reference["answers"]
    if len(answers) != len(refs):
        raise ValueError(f"{len(answers)} answers for {len(refs)} reference prompts")
    trusted = reference.get("trusted")
    k_tokens = reference.get("trusted_tokens") or [None] * len(refs)
    margins = reference.get("min_logit_margins") or [None] * len(refs)
    rows = []
    for i, (prompt, answer, ref) in enumerate(zip(prompts, answers, refs)):
        row = {"prompt": prompt, "answer": answer, "reference": ref, "reference_margin": margins[i],
               "trusted_tokens": k_tokens[i]}
        if trusted is not None:
            n = len(words(trusted[i]))
            row["similarity_trusted"] = round(similarity(" ".join(words(answer)[:n]), trusted[i], prompt), 3)
            row["trusted"] = trusted[i]
            row["near_tie"] = (k_tokens[i] or 0) < MIN_TRUSTED_TOKENS
        else:
            row["near_tie"] = False
        row["similarity_whole"] = round(similarity(answer, ref, prompt), 3)
        rows.append(row)
    counted = [r for r in rows if not r["near_tie"]]
    use_trusted = trusted is not None and len(counted) >= MIN_COUNTED
    if not use_trusted:
        counted = rows
    for r in rows:
        r["counted"] = r in counted
        r["similarity"] = r["similarity_trusted"] if use_trusted else r["similarity_whole"]
        r["agrees"] = r["similarity"] >= t.min_similarity
    agreeing = sum(r["agrees"] for r in counted)
    mean = sum(r["similarity"] for r in counted) / len(counted) if counted else 0.0
    return GateResult(model, agreeing >= needed(len(counted), t), agreeing, len(counted), round(mean, 3), t, rows)


# --- the reference, kept beside the model -------------------------------------------------------


def reference_path(store: ModelStore, name: str) -> Path:
    return store.entry_dir(name) / REFERENCE_FILE


def compute_reference(model_dir: Path, prompts: Sequence[str], max_new_tokens: int) -> list[dict[str, Any]]:
    """Greedy float32 answers of the Hugging Face model, one prompt at a time (no padding effects).

    For each: the answer, its *trusted* prefix (the tokens before the first step whose top-2 logit gap
    is under NEAR_TIE: past such a near tie, which branch greedy decoding takes is rounding noise, and a
    correct lower-precision engine may take the other one) and the smallest gap along the answer.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for prompt in prompts:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        new = gen.sequences[0][enc["input_ids"].shape[1]:]
        gaps = [float(torch.topk(step[0].float(), 2).values.diff().abs()) for step in gen.scores]
        trusted = next((i for i, g in enumerate(gaps) if g < NEAR_TIE), len(new))
        out.append({"answer": tokenizer.decode(new, skip_special_tokens=True).strip(),
                    "trusted": tokenizer.decode(new[:trusted], skip_special_tokens=True).strip(),
                    "trusted_tokens": trusted, "min_margin": round(min(gaps), 3) if gaps else 0.0})
    return out


def load_reference(store: ModelStore, stored: StoredModel, max_new_tokens: int,
                   progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The stored reference of ``stored`` when it matches its fingerprint, prompts and length; else
    computed now (float32 Hugging Face greedy) and written atomically beside the model."""
    path = reference_path(store, stored.name)
    fingerprint = model_fingerprint(stored)
    want = {"version": REFERENCE_VERSION, "fingerprint": fingerprint, "prompts": list(GATE_PROMPTS),
            "max_new_tokens": max_new_tokens}
    try:
        ref = json.loads(path.read_text())
        if all(ref.get(k) == v for k, v in want.items()):
            return ref
    except (OSError, ValueError):
        pass
    progress(f"computing the float32 reference answers of {stored.name} for the correctness gate "
             f"({len(GATE_PROMPTS)} prompts; once per model version)")
    started = time.time()
    rows = compute_reference(stored.path, GATE_PROMPTS, max_new_tokens)

    ref = want | {"answers": [r["answer"] for r in rows], "trusted": [r["trusted"] for r in rows],
                  "trusted_tokens": [r["trusted_tokens"] for r in rows],
                  "min_logit_margins": [r["min_margin"] for r in rows],
                  "engine": f"transformers {version('transformers')} float32 greedy",
                  "seconds": round(time.time() - started, 1),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(ref, indent=2))
    os.replace(tmp, path)
    return ref


# --- asking the served engine ---------------------------------------------------------------------


def served_answers(base_url: str, model_id: str, prompts: Sequence[str], max_tokens: int,
                   headers: dict[str, str] | None = None, timeout_s: float = 300,
                   concurrent: bool = False) -> list[str]:
    """Greedy chat answers of ``model_id`` at an OpenAI-compatible endpoint (``base_url`` without /v1),
    one request at a time or all at once (the engine then batches them: some kernel bugs show only in
    one of the two shapes)."""
    def ask(client: httpx.Client, prompt: str) -> str:
        r = client.post(f"{base_url}/v1/chat/completions", headers=headers or {}, json={
            "model": model_id, "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": max_tokens})
        if r.status_code != 200:
            raise GateError(f"gate request to {model_id} failed: HTTP {r.status_code} {r.text[:300]}")
        return (r.json()["choices"][0]["message"]["content"] or "").strip()

    with httpx.Client(timeout=timeout_s) as client:
        if not concurrent:
            return [ask(client, p) for p in prompts]
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            return list(pool.map(lambda p: ask(client, p), prompts))


def setting_text(engine: dict[str, Any]) -> str:
    """The engine arguments a gate failure names (those that decide the numeric path)."""
    keys = ("dtype", "enforce_eager", "compilation_config", "quantization", "kv_cache_dtype", "hf_overrides")
    return ", ".join(f"{k}={engine[k]!r}" for k in keys if k in engine) or "vLLM defaults"


def failure_message(result: GateResult, setting: str) -> str:
    def near_tie(r: dict[str, Any]) -> str:
        m = r.get("reference_margin")
        return f", a near tie in float32: top-2 logit gap {m}" if m is not None and m < NEAR_TIE else ""

    examples = "; ".join(f"{r['prompt'][:60]!r} -> {r['answer'][:80]!r} (reference {r['reference'][:80]!r}"
                         f"{near_tie(r)})" for r in result.worst(3))
    return (f"correctness gate failed: {result.summary()}. The engine setting ({setting}) garbles this "
            f"model's output. Worst answers: {examples}. Change serving.engine_kwargs, serving.engine_mode, "
            "serving.cpu_kernels or serving.dtype (float32 is the reference's own precision); lower serving.gate "
            "thresholds only for a model that legitimately differs from its checkpoint")


def check_models(base_url: str, models: Sequence[str], store: ModelStore, cfg: Any, engine: dict[str, Any],
                 headers: dict[str, str] | None = None,
                 progress: Callable[[str], None] = print) -> dict[str, GateResult]:
    """Gate every served model (``cfg``: the serving section's GateConfig), its prompts sent one at a
    time and then all at once; raises GateError naming the engine setting and the worst answers at the
    first model that fails. Returns the weaker pass of each model."""
    results = {}
    for model in models:
        stored = store.get(model)
        reference = load_reference(store, stored, cfg.max_new_tokens, progress)
        approximate = stored.kind == "quantized"
        t = Thresholds(cfg.approximate_min_similarity if approximate else cfg.min_similarity, cfg.min_agreeing)
        for concurrent in (False, True):
            answers = served_answers(base_url, model, reference["prompts"], cfg.max_new_tokens, headers,
                                     concurrent=concurrent)
            result = judge(model, answers, reference, t)
            how = "all at once" if concurrent else "one at a time"
            progress(("gate ok" if result.passed else "gate FAILED") + f" ({how}): " + result.summary())
            if not result.passed:
                raise GateError(failure_message(result, setting_text(engine)) + f" (prompts sent {how})")
            # The weaker of the two passes stands for the model.
            if model not in results or result.mean_similarity < results[model].mean_similarity:
                results[model] = result
    return results
