"""Human evaluation in a real headless Chromium: two annotators log in (one with the study's token,
one with an account's password) and rate every item blind; the agreement figures computed from what
they entered match a hand computation."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from app.eval.agreement import agreement
from app.eval.human import HumanEvalStore
from tests.conftest import page_wait, web_server
from tests.unit.eval.test_human import eval_run

pytestmark = pytest.mark.integration
LEVELS = ("A", "B", "tie")
BOB_PASSWORD = "bob's account password"


def plan(who: str, item: int, kind: str) -> dict[str, str]:
    """What each annotator enters: they agree on most items, not all."""
    if kind == "pair":
        return {"preference": LEVELS[item % 3] if who == "ann" else LEVELS[(item // 2) % 3]}
    correctness = 1 + item % 5 if who == "ann" or item % 3 else 1 + (item + 1) % 5
    return {"correctness": str(correctness), "groundedness": str(2 + item % 3 if who == "ann" else 2 + item % 2),
            "helpfulness": "4"}


@pytest.fixture
def study(tmp_path):
    from app.accounts import AccountStore

    store = HumanEvalStore(f"sqlite:///{tmp_path / 'human.db'}")
    accounts = AccountStore(f"sqlite:///{tmp_path / 'accounts.db'}")
    bob = accounts.add("bob", BOB_PASSWORD, ["annotator"])
    made = store.create_study("pilot", eval_run(tmp_path / "run"), ["ann", "bob"], per_item=2, examples=4, seed=3,
                              accounts={"bob": bob.id})
    with web_server(__import__("app.eval.human_web", fromlist=["create_app"]).create_app(store, accounts)) as base:
        yield store, made, base
    store.close()
    accounts.close()


def rate_everything(driver, base: str, who: str, token: str) -> list[int]:
    from selenium.webdriver.common.by import By

    wait = page_wait(driver)
    driver.delete_all_cookies()
    driver.get(base + "/")
    wait.until(lambda d: d.find_elements(By.ID, "login"))  # not logged in: sent to the login page
    driver.find_element(By.ID, "study").send_keys("pilot")
    driver.find_element(By.ID, "name").send_keys(who)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    seen = []
    while True:
        wait.until(lambda d: d.find_elements(By.ID, "rate") or d.find_elements(By.ID, "done"))
        if driver.find_elements(By.ID, "done"):
            break
        page = driver.page_source
        assert "base" not in page and "tuned" not in page  # blind: no model names anywhere
        form = driver.find_element(By.ID, "rate")
        item, kind = int(form.get_attribute("data-item")), form.get_attribute("data-kind")
        assert driver.find_element(By.ID, "progress").text == f"{len(seen)} of 12 done"
        for field, value in plan(who, item, kind).items():
            driver.find_element(By.ID, f"{field}-{value}").click()
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f"#rate[data-item='{item}']"))
        seen.append(item)
    assert driver.find_element(By.ID, "progress").text == "12 of 12 done"
    return seen


def test_two_annotators_rate_blind_and_agreement_matches_hand_computation(study, browser):
    store, made, base = study
    # 4 examples x (2 single + 1 pair) items, both annotators on every item, in their own order.
    assert made["items"] == 12 and made["assignments"] == {"ann": 12, "bob": 12}
    assert made["accounts"] == ["bob"] and set(made["tokens"]) == {"ann"}  # bob logs in with his password
    ann = rate_everything(browser, base, "ann", made["tokens"]["ann"])
    bob = rate_everything(browser, base, "bob", BOB_PASSWORD)
    assert sorted(ann) == sorted(bob) and ann != bob  # same items, shuffled per annotator

    # The API refuses bad input and strangers, and stores nothing for them.
    r = httpx.post(base + "/api/rate", json={"item_id": ann[0], "preference": "A"})
    assert r.status_code == 401
    r = httpx.post(base + "/api/login", json={"study": "pilot", "name": "ann", "token": "nope"})
    assert r.status_code == 401 and "unknown study, annotator, password or token" in r.json()["error"]
    sid = httpx.post(base + "/api/login", json={"study": "pilot", "name": "ann", "token": made["tokens"]["ann"]}).json()["session"]
    r = httpx.post(base + "/api/rate", json={"item_id": ann[0], "correctness": 9, "preference": "maybe"},
                   headers={"Authorization": f"Bearer {sid}"})
    assert r.status_code == 400 and "must be" in r.json()["error"]
    assert httpx.get(base + "/api/next", headers={"Authorization": f"Bearer {sid}"}).json() is None

    ratings = store.ratings("pilot")
    assert len(ratings) == 24
    kinds = dict(zip(ratings["item_id"], ratings["kind"]))
    for who in ("ann", "bob"):  # what the database holds is what the browser entered
        mine = ratings[ratings["annotator"] == who].set_index("item_id")
        for item, kind in kinds.items():
            for field, value in plan(who, item, kind).items():
                assert str(mine.loc[item, field]).removesuffix(".0") == value

    out = agreement(ratings, per_item=2)
    singles = sorted(i for i, k in kinds.items() if k == "single")
    pairs = sorted(i for i, k in kinds.items() if k == "pair")

    # Cohen's kappa by hand: observed agreement and chance agreement from the two marginals.
    x = [int(plan("ann", i, "single")["correctness"]) for i in singles]
    y = [int(plan("bob", i, "single")["correctness"]) for i in singles]
    n = len(x)
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[c] * cy[c] for c in range(1, 6)) / n ** 2
    cohen = out["correctness"]["cohen_kappa"]
    assert len(cohen) == 1 and cohen[0]["items"] == n
    assert cohen[0]["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))

    # Fleiss' kappa by hand over the same items (two raters each).
    counts = [Counter([a, b]) for a, b in zip(x, y)]
    p_items = [(sum(v * v for v in c.values()) - 2) / (2 * 1) for c in counts]
    p_bar = sum(p_items) / n
    p_j = {c: (cx[c] + cy[c]) / (2 * n) for c in range(1, 6)}
    p_e_f = sum(v * v for v in p_j.values())
    assert out["correctness"]["fleiss"]["kappa"] == pytest.approx((p_bar - p_e_f) / (1 - p_e_f))

    # Krippendorff's alpha (nominal) for preferences by hand: coincidence counts over the pairs.
    pa = [plan("ann", i, "pair")["preference"] for i in pairs]
    pb = [plan("bob", i, "pair")["preference"] for i in pairs]
    total = 2 * len(pairs)
    disagree = 2 * sum(a != b for a, b in zip(pa, pb))  # each disagreeing unit adds (a,b) and (b,a)
    marg = Counter(pa) + Counter(pb)
    expected = (total * total - sum(v * v for v in marg.values())) / (total - 1)
    alpha = 1 - (disagree / total) / (expected / total) if expected else None
    assert out["preference"]["krippendorff_alpha"] == pytest.approx(alpha)


def test_a_login_survives_a_server_restart(study):
    store, made, base = study
    sid = httpx.post(base + "/api/login", json={"study": "pilot", "name": "bob", "token": BOB_PASSWORD}).json()["session"]
    auth = {"Authorization": f"Bearer {sid}"}
    before = httpx.get(base + "/api/next", headers=auth).json()
    restarted = HumanEvalStore(store.url)
    try:
        with web_server(__import__("app.eval.human_web", fromlist=["create_app"]).create_app(restarted)) as again:  # no accounts: sessions need none
            assert httpx.get(again + "/api/next", headers=auth).json() == before
            assert httpx.get(again + "/logout", cookies={"he_session": sid}, follow_redirects=False).status_code == 303
            assert httpx.get(again + "/api/next", headers=auth).status_code == 401
    finally:
        restarted.close()
