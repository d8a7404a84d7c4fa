"""QA pairs the documents already contain: FAQ blocks, question headings, definition lists, and what
manuals are made of: a section heading with its first paragraph, an API signature with its
description, a term in bold or code with the sentence that defines it, a code example with the
sentence that introduces it.

They cost no model call and their answers are the authors' own words, so they are the most
trustworthy pairs the dataset has. Each pair keeps the exact slice of the normalized text it came
from (``text[start:end] == evidence``); the answer is that slice's answer part with its whitespace
collapsed, so ``" ".join(answer.split())`` is always contained in ``" ".join(evidence.split())``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from app.data.config import EXTRACT_KINDS
from app.data.formats import ATX_HEADING, fence_state, headings
from app.datasets import normalize_text

KINDS = EXTRACT_KINDS
MAX_ANSWER_CHARS = 500
MIN_ANSWER_WORDS = 3

_BOLD = r"(?:\*\*|__)?"
_Q = re.compile(rf"^ {{0,3}}{_BOLD}(?:Q|Question)[ \t]*:{_BOLD}[ \t]*", re.I)
_A = re.compile(rf"^ {{0,3}}{_BOLD}(?:A|Answer)[ \t]*:{_BOLD}[ \t]*", re.I)
_DEF = re.compile(r"^ {0,3}:[ \t]+(?=\S)")
_SKIPPED = re.compile(r"^(?: {4}|\t| {0,3}!\[)")  # indented code, images
_NOT_PROSE = re.compile(r"^ {0,3}(?:[-*+][ \t]|\d+[.)][ \t]|\||<|>)")  # lists, tables, HTML, quotes
# A sentence ends at . ! ? (and closing quotes/brackets) before a word that does not start in lower
# case: "e.g. this" does not end one, "Return x. If y" does.
_SENTENCE_END = re.compile(r"[.!?][)\]\"'’”]*(?=\s+[^a-z\s])")
_PREFIXES = ("class", "exception", "classmethod", "staticmethod", "abstractmethod", "async", "method", "function")
_CALL = re.compile(rf"^(?:({'|'.join(_PREFIXES)})\s+)?([A-Za-z_][\w.]*)\s*\((?:.*)\)\s*(?:->.*)?$")
_NAME = re.compile(rf"^(?:({'|'.join(_PREFIXES)})\s+)?([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)$")
_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_VAGUE_TITLES = {"glossary", "faq", "faqs", "definitions", "terms", "terminology", "index", "readme", "notes"}


@dataclass(frozen=True)
class ExtractedPair:
    question: str
    answer: str
    evidence: str
    start: int
    end: int
    kind: str


@dataclass(frozen=True)
class _Line:
    start: int
    text: str
    code: bool  # inside a fenced code block, or one of its fences

    @property
    def blank(self) -> bool:
        return not self.text.strip()

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def extract_pairs(text: str, title: str = "", kinds: Iterable[str] = KINDS) -> list[ExtractedPair]:
    """All pairs of the wanted kinds in `text` (normalized, see app.data.formats), by start offset, deduplicated."""
    wanted = set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown extraction kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    lines = _lines(text)
    found: list[ExtractedPair] = []
    if "faq" in wanted:
        found += _faq_pairs(text, lines)
    if "heading_question" in wanted:
        found += _heading_pairs(text, lines)
    if "definition" in wanted:
        found += _definition_pairs(text, lines, title)
    if wanted & {"section", "signature"}:
        found += [p for p in _section_pairs(text, lines, title) if p.kind in wanted]
    if "term" in wanted:
        found += _term_pairs(text, lines, title)
    if "example" in wanted:
        found += _example_pairs(text, lines)
    if "statement" in wanted:
        found += _statement_pairs(text, lines)
    return _dedupe(sorted(found, key=lambda p: (p.start, p.end, p.kind)))


def _lines(text: str) -> list[_Line]:
    out: list[_Line] = []
    fence = ""
    offset = 0
    for line in text.split("\n"):
        after = fence_state(line, fence)
        out.append(_Line(offset, line, bool(fence or after)))
        fence = after
        offset += len(line) + 1
    return out


def _is_heading(line: _Line) -> bool:
    return not line.code and bool(ATX_HEADING.match(line.text))


def _ends_block(line: _Line) -> bool:
    return line.blank or line.code or _is_heading(line)


# --- the three kinds ---------------------------------------------------------------------------------

def _faq_pairs(text: str, lines: list[_Line]) -> list[ExtractedPair]:
    """`Q:` line(s), then (after at most one blank line) `A:` and its block, up to a blank line or the next Q."""
    pairs: list[ExtractedPair] = []
    i = 0
    while i < len(lines):
        qm = None if lines[i].code else _Q.match(lines[i].text)
        if not qm:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not _ends_block(lines[j]) and not _A.match(lines[j].text) \
                and not _Q.match(lines[j].text):
            j += 1
        if j + 1 < len(lines) and lines[j].blank and not lines[j + 1].code and _A.match(lines[j + 1].text):
            j += 1
        am = _A.match(lines[j].text) if j < len(lines) and not lines[j].code else None
        if not am:
            i = max(j, i + 1)
            continue
        k = j + 1
        while k < len(lines) and not _ends_block(lines[k]) and not _Q.match(lines[k].text):
            k += 1
        question = _unbold(_collapse(text[lines[i].start + qm.end():lines[j].start]))
        pair = _pair(text, "faq", question, lines[i].start, lines[j].start + am.end(), lines[k - 1].end)
        if pair:
            pairs.append(pair)
        i = k
    return pairs


def _heading_pairs(text: str, lines: list[_Line]) -> list[ExtractedPair]:
    """A heading that asks a question, answered by the first prose paragraph beneath it."""
    index = {line.start: n for n, line in enumerate(lines)}
    pairs: list[ExtractedPair] = []
    for offset, _, title in headings(text):
        question = _unbold(re.sub(r"^(?:\*\*|__)?(?:Q|Question)\s*:\s*", "", title, flags=re.I))
        if not question.endswith("?"):
            continue
        block = _first_prose(lines, index[offset] + 1)
        if block:
            first, last = block
            pair = _pair(text, "heading_question", question, offset, lines[first].start, lines[last].end)
            if pair:
                pairs.append(pair)
    return pairs


def _first_prose(lines: list[_Line], i: int) -> tuple[int, int] | None:
    """(first, last) line of the first paragraph from line i, code skipped, before the next heading.
    None when that paragraph is a list or table, or only introduces one ("as follows:"): collapsed
    into one line they read badly as an answer."""
    while i < len(lines) and not _is_heading(lines[i]):
        if lines[i].blank or lines[i].code:
            i += 1
            continue
        j = i
        while j + 1 < len(lines) and not _ends_block(lines[j + 1]):
            j += 1
        if not _SKIPPED.match(lines[i].text):
            prose = not _NOT_PROSE.match(lines[i].text) and not lines[j].text.rstrip().endswith(":")
            return (i, j) if prose else None
        i = j + 1
    return None


def _definition_pairs(text: str, lines: list[_Line], title: str) -> list[ExtractedPair]:
    """`term` on its own line, then `: definition` (directly or after one blank line)."""
    pairs: list[ExtractedPair] = []
    for i, line in enumerate(lines):
        if _ends_block(line) or _DEF.match(line.text) or _NOT_PROSE.match(line.text) \
                or _SKIPPED.match(line.text):
            continue
        if i > 0 and not (lines[i - 1].blank or _is_heading(lines[i - 1])):
            continue
        j = i + 2 if i + 2 < len(lines) and lines[i + 1].blank else i + 1
        dm = _DEF.match(lines[j].text) if j < len(lines) and not lines[j].code else None
        if not dm:
            continue
        k = j + 1
        while k < len(lines) and not _ends_block(lines[k]) and not _DEF.match(lines[k].text):
            k += 1
        question = term_question(line.text, title)
        pair = _pair(text, "definition", question, line.start, lines[j].start + dm.end(), lines[k - 1].end)
        if pair:
            pairs.append(pair)
    return pairs


# Headings that name a part of every manual page rather than a topic: their first paragraph answers
# no question the heading asks (DESCRIPTION is handled apart: it says what the page's subject does).
_GENERIC_HEADINGS = {
    "name", "synopsis", "options", "examples", "example", "see also", "notes", "note", "bugs", "author", "authors",
    "files", "environment", "configuration", "git", "documentation", "discussion", "output", "usage", "reporting bugs",
    "copyright", "license", "history", "contents", "table of contents", "summary", "return value", "exit status",
    "parameters", "arguments", "returns", "raises", "attributes", "methods", "footnotes", "references", "index",
    "hooks", "limitations", "warning", "caveats", "security", "trailers", "commands", "subcommands", "modes",
    "mailmap", "interaction", "pretty formats", "diff formatting", "examples", "tips", "hints",
}
_ABOUT_HEADINGS = {"description", "overview", "introduction", "about", "purpose"}
def subject_of(title: str) -> str:
    """The page's subject as a question names it: "git-commit(1) Manual Page" -> "git-commit"."""
    return re.sub(r"\s*\(\d\w*\)|\bManual Page\b", "", title).strip(" -:")


def section_question(heading: str, title: str) -> tuple[str, str] | None:
    """(kind, question) for a section heading whose first paragraph answers it (an API signature, an
    overview of the page's subject), or None."""
    h = _unbold(heading).strip().rstrip(":.")
    bare, code = _unquote(h)
    if (code or _CALL.match(bare)) and _CALL.match(bare):
        return "signature", term_question(h, title)
    low = h.lower()
    if not h or h.endswith("?") or low in _GENERIC_HEADINGS or len(h.split()) > 8 or not re.search(r"[a-z]", low):
        return None
    subject = subject_of(title)
    if low in _ABOUT_HEADINGS:
        if not subject or subject.lower() in _VAGUE_TITLES:
            return None
        return "section", (f"What does {subject} do?" if re.fullmatch(r"[a-z][\w.-]*", subject) else f"What is {subject}?")
    # "How to ..." and "Creating a branch" headings were tried: their first paragraph is an
    # introduction more often than an answer (1 of 4 right in a read sample of git-doc), so they
    # are left to the statement and LLM generators.
    return None


def _section_pairs(text: str, lines: list[_Line], title: str) -> list[ExtractedPair]:
    """A section heading (an API signature, an overview of the page's subject) and the first prose
    paragraph beneath it."""
    index = {line.start: n for n, line in enumerate(lines)}
    pairs: list[ExtractedPair] = []
    for offset, _, heading in headings(text):
        found = section_question(heading, title)
        if not found:
            continue
        block = _first_prose(lines, index[offset] + 1)
        if block:
            first, last = block
            pair = _pair(text, found[0], found[1], offset, lines[first].start, lines[last].end)
            if pair and len(pair.answer.split()) >= 8:
                pairs.append(pair)
    return pairs


_TERM_SENTENCE = re.compile(r"(?:(?:A|An|The)\s+)?(\*\*[^*\n]{2,60}\*\*|`[^`\n]{2,60}`)\s+"
                            r"(?:is|are|means|refers to|denotes|represents|stands for|describes)\s+\S")


def _prose_sentences(text: str, lines: list[_Line]) -> Iterable[tuple[int, int]]:
    """(start, end) in ``text`` of each sentence of each prose paragraph (not code, lists, tables,
    headings or definitions), leading whitespace skipped."""
    i = 0
    while i < len(lines):
        if _ends_block(lines[i]) or _SKIPPED.match(lines[i].text) or _NOT_PROSE.match(lines[i].text) \
                or _DEF.match(lines[i].text):
            i += 1
            continue
        j = i
        while j + 1 < len(lines) and not _ends_block(lines[j + 1]):
            j += 1
        start, para = lines[i].start, text[lines[i].start:lines[j].end]
        bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(para)] + [len(para)]
        for a, b in zip(bounds, bounds[1:]):
            while a < b and para[a].isspace():
                a += 1
            if a < b:
                yield start + a, start + b
        i = j + 1


def _term_pairs(text: str, lines: list[_Line], title: str) -> list[ExtractedPair]:
    """A sentence that opens with a term in bold or code and defines it ("`HEAD` is the ...")."""
    pairs: list[ExtractedPair] = []
    for a, b in _prose_sentences(text, lines):
        m = _TERM_SENTENCE.match(text, a, b)
        if not m:
            continue
        term = m.group(1)
        question = term_question(term.strip("*") if term.startswith("**") else term, title)
        pair = _pair(text, "term", question, a, a, b)
        if pair and len(pair.answer.split()) >= 6:
            pairs.append(pair)
    return pairs


_TO_INTRO = re.compile(r"(?:^|(?<=[.!?]\s))To\s+([a-z][^,:.]{5,120}?),?\s+(?:you\s+(?:can|could|would|should|may|need to)\s+)?"
                       r"(?:use|run|type|do|say|write|add|invoke|call|give|issue|try)\b[^.!?]*:\s*$", re.S)


def _example_pairs(text: str, lines: list[_Line]) -> list[ExtractedPair]:
    """A paragraph ending in "To <do something>, run:" directly followed by a code block (at most 12
    lines): "How do I <do something>?", answered by the sentence and the code."""
    pairs: list[ExtractedPair] = []
    for i, line in enumerate(lines):
        if line.code or line.blank or not line.text.rstrip().endswith(":"):
            continue
        j = i + 1
        while j < len(lines) and lines[j].blank:
            j += 1
        if j >= len(lines) or not lines[j].code or j - i > 2:
            continue
        k = j + 1
        while k < len(lines) and lines[k].code and not _FENCE_LINE.match(lines[k].text):
            k += 1
        if k >= len(lines) or k - j - 1 > 12 or k - j - 1 < 1:
            continue
        p = i
        while p > 0 and not _ends_block(lines[p - 1]):
            p -= 1
        para = text[lines[p].start:line.end]
        m = _TO_INTRO.search(para)
        if not m:
            continue
        a_start = lines[p].start + m.start() + (0 if para[m.start()] == "T" else 1)
        while a_start < len(text) and text[a_start].isspace():
            a_start += 1
        end = lines[k].end
        answer = text[a_start:end]
        question = f"How do I {' '.join(m.group(1).split())}?"
        if len(re.findall(r"[A-Za-z_]{3,}", m.group(1))) < 3:  # "To achieve that, ..." names nothing
            continue
        pairs.append(ExtractedPair(question=question, answer=answer, evidence=text[a_start:end], start=a_start,
                                   end=end, kind="example"))
    return pairs


_STMT_START_BAD = re.compile(r"^(?:However|But|And|Also|So|Thus|Then|This|That|These|Those|It|Its|They|Their|Here|There|"
                             r"Such|Otherwise|Instead|Similarly|For example|Note|See|You|We|I|One|Each|Both|All|Some|"
                             r"Other|Another|Most|Many|Any|In|On|At|As|By|For|From|With|After|Before|Since|Because|"
                             r"Currently|Calling|Using|Only|Now|Again|Usually|Normally|Typically)\b")
_IS_STATEMENT = re.compile(r"^((?:The |A |An )?(?:`[^`\n]{1,40}`|[A-Za-z][\w.-]*)(?: (?:`[^`\n]{1,40}`|[a-z][\w.-]*)){0,4}) "
                           r"(is|are) (?:a|an|the|one|used|meant|responsible|similar|equivalent|synonym|set|stored|"
                           r"only|always|never|usually|not)\b")
_HEAD_NOUNS = r"(?:option|options|command|variable|setting|field|file|flag|mode|attribute|key|directory|hook|argument|" \
              r"parameter|value|function|method|class|module|macro|format|header|section|capability|helper|program|script)"
_VERB_STATEMENT = re.compile(r"^((?:The |A |An )?`[^`\n]{1,40}`(?: (?:[a-z]+ )?" + _HEAD_NOUNS + r")?) "
                             r"([a-z]{3,}(?:s|es))\b(?! (?:is|are|of|to)\b)")
_CONDITION_STATEMENT = re.compile(r"^(If|When|Unless) ([^,;:]{8,120}), [a-z`]")
_SPECIFIC = re.compile(r"`[^`]+`|--?[a-z][\w-]+|\b[a-z]+\.[a-zA-Z]\w*|\b[A-Z][a-z]*[A-Z]\w*|\$\w+|\b[A-Z]{2,}\b")
NOT_VERBS = {"this", "its", "has", "was", "does", "is", "as", "us", "ours", "yes", "less", "unless", "across", "always",
              "sometimes", "perhaps", "its", "status", "process", "access", "address", "class", "alias", "bias", "series",
              "behaves", "appears", "exists", "works", "happens", "matters", "fails", "succeeds", "seems", "stays",
              "remains", "lives", "belongs", "refers", "thus", "also", "comes", "goes", "occurs", "starts", "ends"}


def base_verb(verb: str) -> str:
    """specifies -> specify, matches -> match, uses -> use, passes -> pass (third person to base form)."""
    if verb.endswith("ies") and len(verb) > 4:
        return verb[:-3] + "y"
    if verb.endswith(("sses", "ches", "shes", "xes", "zes", "oes")):
        return verb[:-2]
    return verb[:-1]


def statement_question(sentence: str) -> str | None:
    """The question a stand-alone statement answers, by rule, or None when it names nothing specific:
    "`X` is ..." -> "What is `X`?"; "The `x` option removes ..." -> "What does the `x` option remove?";
    "If `a` is set, ..." -> "What happens if `a` is set?"."""
    m = _CONDITION_STATEMENT.match(sentence)
    if m:
        cond = m.group(2).strip()
        if _SPECIFIC.search(cond) and len(cond.split()) >= 3 \
                and not re.match(r"(?:it|this|that|they|you|we|so|not|used|set|given|using)\b", cond):
            return f"What happens {m.group(1).lower()} {cond}?"
        return None
    if _STMT_START_BAD.match(sentence) or re.match(r"(?:If|When|Unless|While|Where|Whether)\b", sentence):
        return None
    m = _IS_STATEMENT.match(sentence)
    if m:
        subject = m.group(1)
        words = [w for w in re.findall(r"[A-Za-z_]+", subject) if w.lower() not in ("the", "a", "an")]
        low = f" {subject.lower()} "
        if not words or re.search(r" (?:this|that|these|those|it|its|their|such|of|and|or|resulting|above|following|same) ", low) \
                or words[0].endswith(("ly", "ing")) or not (_SPECIFIC.search(subject) or 2 <= len(words) <= 3):
            return None
        return f"What {m.group(2)} {_lower_first(subject)}?"
    m = _VERB_STATEMENT.match(sentence)
    if m and m.group(2) not in NOT_VERBS:
        return f"What does {_lower_first(m.group(1))} {base_verb(m.group(2))}?"
    return None


def _lower_first(subject: str) -> str:
    """ "The `x` option" -> "the `x` option", "Lightweight tags" -> "lightweight tags"; code, acronyms and
    CamelCase names keep their case."""
    first, _, rest = subject.partition(" ")
    if first in ("The", "A", "An") or not (first.startswith("`") or first.isupper() or re.search(r"[A-Z]", first[1:])):
        return (first.lower() + (" " + rest if rest else "")).strip()
    return subject


def _statement_pairs(text: str, lines: list[_Line]) -> list[ExtractedPair]:
    """A stand-alone sentence of a prose paragraph turned into the question it answers, by rule
    (:func:`statement_question`); the sentence is the answer."""
    pairs: list[ExtractedPair] = []
    for a, b in _prose_sentences(text, lines):
        sentence = _collapse(text[a:b])
        if not (8 <= len(sentence.split()) <= 60) or not sentence.endswith(".") or not sentence[0].isupper() \
                and not sentence.startswith("`"):
            continue
        question = statement_question(sentence)
        if question:
            pair = _pair(text, "statement", question, a, a, b)
            if pair:
                pairs.append(pair)
    return pairs


# --- wording -------------------------------------------------------------------------------------------

def term_question(term: str, title: str = "") -> str:
    """The question a definition answers, worded from its term: code gets code questions."""
    bare, code = _unquote(term)
    if re.match(r"^--?[A-Za-z\[]", bare):  # a command-line option: "-a, --all"
        names = [x.strip() for x in bare.split(",") if x.strip()]
        name = next((x for x in names if x.startswith("--")), names[0])
        subject = subject_of(title)
        return f"What does the `{name}` option{f' of {subject}' if subject else ''} do?"
    call = _CALL.match(bare)
    if call and (code or call.group(1) or _plain_callable(call.group(2))):
        return _code_question(call.group(1), call.group(2), callable_=True)
    name = _NAME.match(bare) if code else None
    if name:
        return _code_question(name.group(1), name.group(2), callable_=False)
    if title and _adds_context(title, bare):
        return f"In {title}, what is {bare}?"
    subject = subject_of(title)
    if len(bare.split()) == 1 and subject and subject.lower() not in _VAGUE_TITLES and subject.lower() != bare.lower():
        return f"In {subject}, what is {bare}?"  # "What is clone.rejectShallow?" alone is too terse to stand
    return f"What is {bare}?"


def _code_question(prefix: str | None, name: str, callable_: bool) -> str:
    last = name.rsplit(".", 1)[-1]
    if prefix == "exception" or re.search(r"(Error|Exception|Warning)$", last):
        return f"What is the `{name}` exception for?"
    if prefix == "class" or (callable_ and last[:1].isupper() and not last.isupper()):
        return f"What is the `{name}` class for?"
    if callable_:
        return f"What does `{name}()` do?"
    if "." in name and (last[:1].islower() or last.startswith("_")):  # `re.Match.re`, `time.struct_time.tm_year`: an attribute
        return f"What is the `{name}` attribute?"
    if "." in name:  # `typing.Container`
        return f"What is `{name}` for?"
    return f"What is `{name}`?"


def _plain_callable(name: str) -> bool:
    """Without backticks, `join(a, *p)` is code but `API(s)` is prose."""
    return "." in name or "_" in name or name[:1].islower()


def _unquote(term: str) -> tuple[str, bool]:
    """The term without emphasis, backticks and a trailing colon, and whether it was code."""
    t = _unbold(term.strip()).rstrip(":").strip()
    m = re.fullmatch(r"(`+)\s*(.*?)\s*\1", t)
    if m:
        return m.group(2), True
    m = re.fullmatch(rf"({'|'.join(_PREFIXES)})\s+(`+)\s*(.*?)\s*\2", t)
    if m:
        return f"{m.group(1)} {m.group(3)}", True
    return t, False


def _adds_context(title: str, term: str) -> bool:
    """A short, lower-case term ("replica") is ambiguous on its own; a specific title disambiguates it."""
    t, low = title.strip(), term.lower()
    if t.lower() in _VAGUE_TITLES or low in t.lower() or t.lower() in low:
        return False
    words = term.split()
    return len(words) <= 3 and term[1:] == term[1:].lower() and not any(c.isdigit() for c in term)


# --- answers -------------------------------------------------------------------------------------------

def _pair(text: str, kind: str, question: str, start: int, a_start: int, a_end: int) -> ExtractedPair | None:
    """A pair whose evidence runs from `start` to the end of the (possibly shortened) answer."""
    while a_start < a_end and text[a_start].isspace():
        a_start += 1
    end = a_start + _cut(text[a_start:a_end])
    answer = _unbold(_collapse(text[a_start:end]))
    if not question or len(answer.split()) < MIN_ANSWER_WORDS:
        return None
    return ExtractedPair(question=question, answer=answer, evidence=text[start:end], start=start, end=end, kind=kind)


def _cut(raw: str, limit: int = MAX_ANSWER_CHARS) -> int:
    """Length of the prefix of `raw` to keep: whole sentences up to `limit` collapsed characters; a first
    sentence up to twice that; else the words that fit (rare: one very long sentence)."""
    raw = raw.rstrip()
    if len(_collapse(raw)) <= limit:
        return len(raw)
    ends = [m.end() for m in _SENTENCE_END.finditer(raw)]
    fitting = [e for e in ends if len(_collapse(raw[:e])) <= limit]
    if fitting:
        return fitting[-1]
    if ends and len(_collapse(raw[:ends[0]])) <= 2 * limit:
        return ends[0]
    spaces = [m.start() for m in re.finditer(r"\s", raw) if len(_collapse(raw[:m.start()])) <= limit]
    return spaces[-1] if spaces else limit


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _unbold(text: str) -> str:
    """Drop emphasis markers left dangling at either end ("**Q: Why?**" leaves "Why?**")."""
    for mark in ("**", "__"):
        if text.endswith(mark) and text.count(mark) % 2:
            text = text[: -len(mark)].rstrip()
        if text.startswith(mark) and text.count(mark) % 2:
            text = text[len(mark):].lstrip()
        if text.startswith(mark) and text.endswith(mark) and text.count(mark) == 2 and len(text) > 4:
            text = text[len(mark):-len(mark)].strip()
    return text


def _dedupe(pairs: list[ExtractedPair]) -> list[ExtractedPair]:
    seen: set[tuple[str, str]] = set()
    out: list[ExtractedPair] = []
    for p in pairs:
        key = (normalize_text(p.question), normalize_text(p.answer))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
