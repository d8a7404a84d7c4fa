"""An LLM judge: a model grades every answer against the reference, a second domain accuracy.

The judge is any chat model behind an OpenAI-compatible API (a store model served with the
evaluated ones, or an external endpoint), asked with a configurable prompt and greedy decoding
through the same ray.data.llm path as the answers. Its reply is read by :func:`read_verdict` into
one of five outcomes: correct, incorrect, abstain, ambiguous or unparsed. Only correct (1) and
incorrect (0) enter the LLM-judge accuracy; the other three, and failed judge requests, are left out
of it (NaN in the per-example table) and counted per model, so the figure can be trusted or not. An
empty answer is not sent to the judge: it is a wrong answer (0).

How a reply is read (the prompt asks for one word, correct or incorrect; models say more):

* Formatting is ignored: Markdown emphasis, backticks, quotes, brackets, case ("**Correct**",
  "`INCORRECT`", '"correct"').
* The deciding text: the text after a label ("Verdict:", "Final verdict:", "Final answer:",
  "Grade:", "Judgment:", "Decision:", "Assessment:", "Evaluation:", "Conclusion:", "Rating:",
  "Label:"; the next line when the label ends its line) when the reply has one; several labelled
  verdicts must agree. Otherwise the first line that says anything about the verdict; later lines
  are explanation and are not read.
* Verdict words: correct, right, accurate (positive); incorrect, wrong, inaccurate, incomplete
  (negative); yes/yeah/true and no/nope/false only as the first word of the deciding text ("No, it
  misses the year"), since elsewhere they are ordinary words ("there is no mention"). "The correct
  answer is ..." is not a verdict.
* Negation: an odd number of not/never/no/cannot/neither/nor/...n't among the three words before a
  verdict word, in the same clause, flips it: "not correct", "isn't correct", "is not right" are
  incorrect, "not incorrect" is correct.
* Partial credit is incorrect (the scale is binary and the default prompt says missing facts make an
  answer incorrect): "partially/partly/mostly/almost/somewhat correct", and a negated degree ("not
  entirely correct", "not quite right", "not completely wrong").
* Abstentions ("I cannot judge", "cannot determine", "unable to verify", "unsure", "not sure",
  "unclear", "not enough information", "N/A") and an empty reply: abstain, when the abstention comes
  before any verdict word of the deciding line ("Incorrect. I cannot verify the date" is incorrect).
* Contradictions: verdict words of both polarities in the deciding line ("correct ... incorrect",
  "No, it is correct") are ambiguous: no verdict.
* No verdict word at all ("incorrectly spelled", "The candidate says 1999"): unparsed.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any, Callable, NamedTuple

import pandas as pd

from app.config import ExperimentConfig
from app.eval.answer import answer_all
from app.eval.config import JudgeConfig

SYSTEM = "You are a strict grader. Reply with a single word."

CORRECT, INCORRECT, ABSTAIN, AMBIGUOUS, UNPARSED = "correct", "incorrect", "abstain", "ambiguous", "unparsed"
SCORES = {CORRECT: 1.0, INCORRECT: 0.0}
NO_VERDICT = (ABSTAIN, AMBIGUOUS, UNPARSED)  # outcomes left out of the accuracy


class Verdict(NamedTuple):
    """How a judge's reply was read: the outcome and the words that decided it (or why none did)."""

    outcome: str  # correct | incorrect | abstain | ambiguous | unparsed
    because: str

    @property
    def score(self) -> float | None:
        """1.0 (correct), 0.0 (incorrect), None (no verdict: left out of the accuracy)."""
        return SCORES.get(self.outcome)


_LABEL = re.compile(r"\b(?:final\s+verdict|verdict|final\s+answer|final\s+grade|grade|grading|judge?ment|decision|"
                    r"assessment|evaluation|conclusion|rating|label)\s*(?:[:=]|\s[-\u2013\u2014]\s)\s*(.*)")
_VERDICT_WORD = re.compile(r"\b(incorrect|inaccurate|incomplete|wrong|correct|right|accurate)\b"
                           r"(?!\s+(?:answer|response)\s+(?:is|was|would|should|will)\b)")
_LEADING = re.compile(r"^\W*(yes|yep|yeah|no|nope|true|false)\b")
_ABSTAIN = re.compile(
    r"\b(?:can\s*not|can't|cant|could\s+not|couldn't|unable\s+to|not\s+able\s+to|impossible\s+to|hard\s+to|"
    r"difficult\s+to)\s+(?:\w+\s+){0,2}?(?:judg\w*|determin\w*|tell|assess\w*|evaluat\w*|grad\w*|say|decid\w*|"
    r"verif\w*|know|confirm\w*|compar\w*|rate|help|assist|comply|answer|be\s+sure|be\s+certain)\b"
    r"|\b(?:not\s+sure|unsure|uncertain|unclear|undetermined|undecided|indeterminate|don't\s+know|do\s+not\s+know|"
    r"no\s+idea|not\s+enough\s+(?:information|info|context)|insufficient\s+(?:information|info|context)|"
    r"not\s+applicable|no\s+verdict|abstain\w*)\b"
    r"|(?<![\w/])n/?a(?![\w/])(?=\W*$)")  # "N/A", "NA" as the whole (rest of the) line
_NEGATORS = {"not", "never", "no", "cannot", "neither", "nor", "hardly", "barely", "isnt", "arent", "wasnt", "werent",
             "doesnt", "dont", "didnt", "cant", "wont", "couldnt", "shouldnt", "wouldnt", "aint"}
_DEGREES = {"entirely", "completely", "fully", "totally", "wholly", "quite", "exactly", "perfectly", "absolutely",
            "100%", "all", "strictly", "precisely", "necessarily"}
_PARTIAL = {"partially", "partly", "partial", "mostly", "largely", "somewhat", "half", "almost", "nearly", "mainly",
            "broadly", "semi", "kinda", "sorta"}
_CLAUSE = re.compile(r"[.,;:!?]|\b(?:but|although|though|however|while|whereas)\b")
_POSITIVE = {"correct", "right", "accurate", "yes", "yep", "yeah", "true"}


def _clean(reply: str) -> str:
    text = unicodedata.normalize("NFKC", reply).replace("\u2019", "'").replace("\u2018", "'").lower()
    text = re.sub(r"[*_`#~\"\u201c\u201d\u00ab\u00bb\[\](){}<>|]", " ", text)  # emphasis, code, quotes, brackets, tags
    return re.sub(r"[ \t]+", " ", text)


def _polarity(text: str, match: re.Match) -> tuple[str, str]:
    """(correct|incorrect, the phrase) of the verdict word at ``match``, after negation and partial credit."""
    word = match.group(1)
    clause = _CLAUSE.split(text[:match.start()])[-1]  # the words since the last clause break ...
    clause = _VERDICT_WORD.split(clause)[-1]  # ... and since the last verdict word ("neither correct nor ...")
    window = re.findall(r"[\w'%]+", clause)[-3:]
    phrase = " ".join([*window, word])
    norm = [w.replace("'", "") for w in window]
    negations = [i for i, (raw, w) in enumerate(zip(window, norm)) if w in _NEGATORS or raw.endswith("n't")]
    if any(w in _PARTIAL for w in norm) or (negations and any(w in _DEGREES for w in norm[negations[0] + 1:])):
        return INCORRECT, phrase  # partial credit is not correct
    positive = (word in _POSITIVE) == (len(negations) % 2 == 0)
    return (CORRECT if positive else INCORRECT), phrase


def _signals(text: str) -> list[tuple[int, str, str]]:
    """(position, correct|incorrect|abstain, words) for everything in a line that bears on the verdict."""
    out = [(m.start(), ABSTAIN, m.group(0).strip()) for m in _ABSTAIN.finditer(text)]
    out += [(m.start(), *_polarity(text, m)) for m in _VERDICT_WORD.finditer(text)]
    lead = _LEADING.match(text)
    if lead:
        out.append((lead.start(1), CORRECT if lead.group(1) in _POSITIVE else INCORRECT, lead.group(1)))
    return sorted(out)


def _decide(text: str) -> Verdict | None:
    """The verdict a piece of text gives, or None when it says nothing about one."""
    found = _signals(text)
    if not found:
        return None
    if found[0][1] == ABSTAIN:
        return Verdict(ABSTAIN, found[0][2])
    verdicts = [(o, w) for _, o, w in found if o != ABSTAIN]
    if len({o for o, _ in verdicts}) > 1:
        return Verdict(AMBIGUOUS, " / ".join(w for _, w in verdicts))
    return Verdict(verdicts[0][0], verdicts[0][1])


def read_verdict(reply: str | None) -> Verdict:
    """How a judge's reply is read (the rules are in the module's docstring)."""
    if not reply or not reply.strip():
        return Verdict(ABSTAIN, "empty reply")
    lines = [ln.strip() for ln in _clean(reply).splitlines()]
    lines = [ln for ln in lines if ln]
    labelled = []
    for i, line in enumerate(lines):
        for m in _LABEL.finditer(line):
            rest = m.group(1).strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            labelled.append(_decide(rest))
    labelled = [v for v in labelled if v is not None]
    if labelled:
        outcomes = {v.outcome for v in labelled}
        if len(outcomes) == 1:
            return labelled[0]
        return Verdict(AMBIGUOUS, " / ".join(f"{v.outcome} ({v.because})" for v in labelled))
    for line in lines:
        v = _decide(line)
        if v is not None:
            return v
    return Verdict(UNPARSED, "no verdict word")


def parse_verdict(reply: str | None) -> float | None:
    """1.0 (correct), 0.0 (incorrect), or None when the reply gives no verdict (abstains, contradicts
    itself, or has no verdict word): see :func:`read_verdict`."""
    return read_verdict(reply).score


def judge_messages(questions: list[str], references: list[str], answers: list[str], judge: JudgeConfig) -> list[str]:
    """The judge's chat messages (JSON) per answer."""
    return [json.dumps([{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": judge.prompt.format(question=q, reference=r, answer=a)}])
            for q, r, a in zip(questions, references, answers)]


def judge_answers(frame: pd.DataFrame, answers: list[str], model: str, cfg: ExperimentConfig,
                  progress: Callable[[str], None]) -> tuple[list[float], list[str], dict[str, Any]]:
    """(verdicts, the judge's replies, facts) for one model's answers, in the frame's order.

    A verdict is 1.0 (correct) or 0.0 (incorrect, and every empty answer, which is not sent), or NaN
    where the judge gave none (abstained, ambiguous, unparsed) or its request failed: those are left
    out of the LLM-judge accuracy and counted in the facts (``no_verdict`` = abstain + ambiguous +
    unparsed; ``excluded`` = no_verdict + request_errors).
    """
    judge = cfg.evaluation.judge
    assert judge is not None
    asked = [i for i, a in enumerate(answers) if a.strip()]
    scores, replies = [0.0] * len(answers), [""] * len(answers)
    facts: dict[str, Any] = {"judge": judge.model.name, "asked": len(asked), "verdicts": 0, "no_verdict": 0,
                             **{o: 0 for o in NO_VERDICT}, "request_errors": 0, "excluded": 0}
    if not asked:
        return scores, replies, facts
    sub = frame.iloc[asked]
    messages = judge_messages(sub["question"].tolist(), sub["reference"].tolist(), [answers[i] for i in asked], judge)
    progress(f"  judging {model}'s answers with {judge.model.name}")
    got, errors, call = answer_all(sub, messages, judge.model, cfg, progress, max_tokens=judge.max_new_tokens)
    for i, reply, error in zip(asked, got, errors):
        replies[i] = reply
        if error:
            facts["request_errors"] += 1
            scores[i] = math.nan
            continue
        verdict = read_verdict(reply)
        if verdict.score is None:
            facts["no_verdict"] += 1
            facts[verdict.outcome] += 1
            scores[i] = math.nan
        else:
            facts["verdicts"] += 1
            scores[i] = verdict.score
    facts["excluded"] = facts["no_verdict"] + facts["request_errors"]
    facts["seconds"] = call["seconds"]
    if facts["excluded"]:
        progress(f"  judge: {facts['no_verdict']} replies without a verdict ({facts[ABSTAIN]} abstained, "
                 f"{facts[AMBIGUOUS]} ambiguous, {facts[UNPARSED]} unparsed) and {facts['request_errors']} failed "
                 f"requests for {model}: left out of its LLM-judge accuracy ({facts['verdicts']} verdicts)")
    return scores, replies, facts
