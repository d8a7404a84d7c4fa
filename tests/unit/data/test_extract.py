import pytest

from app.data.extract import KINDS, MAX_ANSWER_CHARS, ExtractedPair, extract_pairs, term_question
from app.data.formats import parse_document


def collapsed(text: str) -> str:
    return " ".join(text.split())


def check(text: str, pairs: list[ExtractedPair]) -> None:
    """The contract every consumer relies on."""
    assert [p.start for p in pairs] == sorted(p.start for p in pairs)
    for p in pairs:
        assert text[p.start:p.end] == p.evidence
        assert collapsed(p.answer) == p.answer and p.answer in collapsed(p.evidence)
        assert p.kind in KINDS and p.question and len(p.answer.split()) >= 3


FAQ = """# Operations FAQ

Q: How do I restart
the service?
A: Run `systemctl restart app`. It takes
about ten seconds.
Q: Where are the logs?
A: In /var/log/app, rotated daily by logrotate.

**Q:** Who owns the on-call rota?

**A:** The platform team, reachable on #platform-oncall.

**Q: Can I skip staging?**
**A:** No.

Question: What port does it listen on?
Answer: Port 8080 on every host by default.

This paragraph is not part of the answer.

```
Q: inside code is ignored
A: yes it is ignored entirely here
```
"""


def test_faq_blocks():
    pairs = extract_pairs(FAQ, kinds=["faq"])
    check(FAQ, pairs)
    assert [(p.question, p.answer) for p in pairs] == [
        ("How do I restart the service?", "Run `systemctl restart app`. It takes about ten seconds."),
        ("Where are the logs?", "In /var/log/app, rotated daily by logrotate."),
        ("Who owns the on-call rota?", "The platform team, reachable on #platform-oncall."),
        ("What port does it listen on?", "Port 8080 on every host by default."),
    ]  # "No." is too short to be an answer
    assert pairs[0].evidence.startswith("Q: How do I restart") and pairs[0].evidence.endswith("ten seconds.")


HEADINGS = """# Deploying

## Why use blue/green?

```bash
# comments in code are not headings?
deploy --blue
```

Because a bad release can be switched back in seconds, without a rebuild.

A second paragraph that is not part of the answer.

## How do I roll back?

- run `rollback`
- check the dashboard

## Q: **What about databases?**

Schema migrations must be backwards compatible for one release.

## Is this short?

Yes.

## Not a question

Ordinary text here, nothing to extract.
"""


def test_heading_questions():
    pairs = extract_pairs(HEADINGS, kinds=["heading_question"])
    check(HEADINGS, pairs)
    assert [(p.question, p.answer) for p in pairs] == [
        ("Why use blue/green?", "Because a bad release can be switched back in seconds, without a rebuild."),
        ("What about databases?", "Schema migrations must be backwards compatible for one release."),
    ]  # a list as the first block and a one-word answer give no pair
    assert pairs[0].evidence.startswith("## Why use blue/green?")


DEFINITIONS = """# Ray Serve Guide

replica
: One running copy of a deployment, in its own worker process.

`serve.run(target, *, name="default")`
: Deploy an application and return a handle to its ingress.
  Blocks until the application is running.

`class serve.Deployment(func_or_class, name)`
: A versioned unit of a served model that Ray can scale.

`serve.exceptions.RayServeException`
: Raised when Serve cannot complete the requested operation.

join(a, *p)

: Join two or more pathname components together.

Ingress
: The deployment that receives every HTTP request first.

tiny
: Too short.

- list item
: not a definition of a list item
"""


def test_definitions_and_their_questions():
    pairs = extract_pairs(DEFINITIONS, title="Ray Serve Guide", kinds=["definition"])
    check(DEFINITIONS, pairs)
    assert [(p.question, p.answer) for p in pairs] == [
        ("In Ray Serve Guide, what is replica?", "One running copy of a deployment, in its own worker process."),
        ("What does `serve.run()` do?",
         "Deploy an application and return a handle to its ingress. Blocks until the application is running."),
        ("What is the `serve.Deployment` class for?", "A versioned unit of a served model that Ray can scale."),
        ("What is the `serve.exceptions.RayServeException` exception for?",
         "Raised when Serve cannot complete the requested operation."),
        ("What does `join()` do?", "Join two or more pathname components together."),
        ("In Ray Serve Guide, what is Ingress?", "The deployment that receives every HTTP request first."),
    ]
    assert pairs[1].evidence.startswith('`serve.run(target, *, name="default")`\n: Deploy')


@pytest.mark.parametrize("term, title, question", [
    ("`os.path.join(a, *p)`", "", "What does `os.path.join()` do?"),
    ("os.path.join(a, *p)", "", "What does `os.path.join()` do?"),
    ("`` weird(x='`') ``", "", "What does `weird()` do?"),
    ("`classmethod dict.fromkeys(iterable[, value])`", "", "What does `dict.fromkeys()` do?"),
    ("class Foo(bar)", "", "What is the `Foo` class for?"),
    ("`json.JSONDecoder(*, strict=True)`", "", "What is the `json.JSONDecoder` class for?"),
    ("`os.WEXITSTATUS(status)`", "", "What does `os.WEXITSTATUS()` do?"),
    ("`typing.Union`", "", "What is `typing.Union` for?"),
    ("`object.__slots__`", "", "What is the `object.__slots__` attribute?"),
    ("`re.Match.re`", "", "What is the `re.Match.re` attribute?"),
    ("`Union`", "", "What is `Union`?"),
    ("**Chunk overlap**", "Data pipeline", "In Data pipeline, what is Chunk overlap?"),
    ("chunk", "Glossary", "What is chunk?"),  # a vague title adds nothing
    ("Ray Data", "Ray Data guide", "What is Ray Data?"),  # the title already names it
    ("HTTP proxy", "Serving", "What is HTTP proxy?"),  # an acronym is specific already
    ("API(s)", "", "What is API(s)?"),  # prose, not code
])
def test_term_question(term, title, question):
    assert term_question(term, title) == question


def test_long_answers_are_cut_at_a_sentence_boundary():
    sentence = "This sentence about replicas has exactly ten words in it. "
    text = "replica\n: " + sentence * 20 + "\n"
    (pair,) = extract_pairs(text)
    check(text, [pair])
    assert MAX_ANSWER_CHARS - len(sentence) < len(pair.answer) <= MAX_ANSWER_CHARS
    assert pair.answer.endswith("in it.") and collapsed(sentence * 20).startswith(pair.answer)
    assert pair.evidence == text[: len("replica\n: ") + len(pair.answer)]


def test_e_g_does_not_end_a_sentence():
    words = "word " * 100
    text = f"term\n: Use a tool, e.g. the {words}end. Next sentence here.\n"
    (pair,) = extract_pairs(text)
    assert "e.g. the" in pair.answer and pair.answer.endswith("end.")


def test_all_kinds_sorted_deduplicated_and_filtered():
    text = ("# Doc\n\n## What is a replica?\n\nOne running copy of a deployment.\n\n"
            "Q: What is a replica?\nA: One running copy of a deployment.\n\n"
            "replica\n: One running copy of a deployment, for sure.\n")
    pairs = extract_pairs(text, title="Doc")
    check(text, pairs)
    assert [p.kind for p in pairs] == ["heading_question", "definition"]  # the FAQ repeats the heading's pair
    assert extract_pairs(text, kinds=()) == []
    with pytest.raises(ValueError, match="unknown extraction kinds"):
        extract_pairs(text, kinds=["faq", "llm"])


def test_pairs_from_a_parsed_html_file(tmp_path):
    path = tmp_path / "glossary.html"
    path.write_text("<html><head><title>Serving handbook</title></head><body><h2>Terms</h2><dl>"
                    "<dt>autoscaler</dt><dd>Adds or removes replicas to follow the request load.</dd>"
                    "</dl><h2>Why Ray?</h2><p>It runs Python at cluster scale with little glue.</p></body></html>")
    doc = parse_document(str(path), path.read_bytes())
    pairs = extract_pairs(doc.text, doc.title)
    check(doc.text, pairs)
    assert [(p.kind, p.question) for p in pairs] == [
        ("definition", "In Serving handbook, what is autoscaler?"),
        ("heading_question", "Why Ray?"),
    ]


def test_manual_kinds_section_signature_term_example():
    text = ("# git-commit(1) Manual Page\n\n## DESCRIPTION\n\nCreate a new commit containing the current contents of "
            "the index and the given log message.\n\n## Creating a branch\n\nA branch is created with git branch, "
            "which points a new name at the current commit.\n\n## `parse(text, strict=False)`\n\nParse the text and "
            "return the tree it describes, or raise on errors.\n\n## OPTIONS\n\nThese options are described below "
            "in some detail for you.\n\nThe index holds what you stage. `HEAD` is the name of the commit that the "
            "current branch points at.\n\nTo list every branch with its last commit, run:\n\n```\n$ git branch -v\n```\n")
    pairs = extract_pairs(text, title="git-commit(1) Manual Page")
    check(text, [p for p in pairs if p.kind != "example"])
    # The same sentence as a term definition gives the same pair: kept once.
    assert [p.kind for p in extract_pairs(text, "git-commit(1)", kinds=["term"])] == ["term"]
    got = {(p.kind, p.question) for p in pairs}
    assert got == {("section", "What does git-commit do?"),
                   ("signature", "What does `parse()` do?"), ("statement", "What is `HEAD`?"),
                   ("example", "How do I list every branch with its last commit?")}
    example = next(p for p in pairs if p.kind == "example")
    assert example.answer.startswith("To list every branch") and example.answer.endswith("git branch -v\n```")
    assert text[example.start:example.end] == example.evidence


def test_option_terms_name_the_option_and_the_page():
    assert term_question("-a, --all", "git-commit(1)") == "What does the `--all` option of git-commit do?"
    assert term_question("`--untracked`", "") == "What does the `--untracked` option do?"


def test_a_one_letter_name_as_subject_is_not_a_statement_question_and_does_not_crash():
    """"A is an ancestor of B" reads "A" as an article: no subject is left, so no question (it raised
    IndexError, which skipped the whole document as "failed to process")."""
    from app.data.extract import statement_question

    assert statement_question("A is an ancestor of B if B can be reached from A by following parents.") is None
    text = "# Revisions\n\nA is an ancestor of B if B can be reached from A by following parents.\n"
    assert [p.kind for p in extract_pairs(text, "gitrevisions(7)")] == []
