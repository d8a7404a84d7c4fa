"""The results dashboard: one page per experiment with the arms compared over time.

``app ab dashboard`` serves it (login with an account that has the analyst role, app.accounts). What it
shows, from the experiment database at each load (app.ab.report, scores as last computed by
``app ab report``): the decision and its reasons, the sample-ratio check, the power analysis, the
per-arm table, the comparisons with their intervals, the primary metric of each arm over time with
the always-valid confidence sequence of the difference, and shadow-mode agreement.

Routes: ``GET /`` (the list of experiments), ``GET /experiments/{name}`` (the page),
``GET /api/experiments/{name}`` (the report as JSON); 404 for an unknown experiment.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse

from app.accounts import AccountStore
from app.web import WebAuth, h, html_document, json_error, new_app

TITLE = "A/B experiments"
OPEN_PATHS = ("/login", "/api/login", "/api/logout", "/logout")
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1f2328}h1{font-size:22px}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}.ok{color:#1a7f37}.alarm{color:#cf222e;font-weight:600}
.decision{font-size:17px;font-weight:600}.muted{color:#57606a}svg{background:#fff;border:1px solid #d0d7de}"""
COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700"]


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _polyline(points: list[tuple[float, float]], sx: Callable[[float], float], sy: Callable[[float], float],
              color: str, dash: str = "") -> str:
    if not points:
        return ""
    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline fill="none" stroke="{color}" stroke-width="2"{extra} points="{pts}"/>'


def chart(looks: list[dict[str, Any]], baseline: str, candidate: str, element_id: str) -> str:
    """Two SVG panels over the looks: each arm's primary value, and the difference with its intervals."""
    if not looks:
        return f'<p id="{h(element_id)}" class="muted">No looks yet: each arm needs two units with a primary value.</p>'
    w, hgt, pad = 640, 220, 40
    xs = [lk["observations"] for lk in looks]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

    def panel(series: list[tuple[str, list[tuple[float, float]], str, str]], lo: float, hi: float, title: str,
              zero: bool) -> str:
        if hi <= lo:
            hi = lo + 1

        def sy(y: float) -> float:
            return hgt - pad + (lo - y) / (hi - lo) * (hgt - 2 * pad)

        body = "".join(_polyline(pts, sx, sy, color, dash) for _, pts, color, dash in series)
        axis = f'<line x1="{pad}" y1="{sy(0):.1f}" x2="{w - pad}" y2="{sy(0):.1f}" stroke="#8c959f"/>' if zero else ""
        legend = "".join(f'<text x="{pad + 150 * i}" y="16" fill="{color}">{h(name)}</text>'
                         for i, (name, _, color, _) in enumerate(series))
        ticks = (f'<text x="4" y="{sy(hi):.1f}" font-size="11">{hi:.2g}</text>'
                 f'<text x="4" y="{sy(lo):.1f}" font-size="11">{lo:.2g}</text>'
                 f'<text x="{w - pad - 60}" y="{hgt - 8}" font-size="11">{x1} obs.</text>')
        return (f'<svg width="{w}" height="{hgt}" role="img" aria-label="{h(title)}"><title>{h(title)}</title>'
                f'{axis}{body}{legend}{ticks}</svg>')

    values = [(lk["observations"], lk["baseline"]) for lk in looks], [(lk["observations"], lk["candidate"]) for lk in looks]
    allv = [v for s in values for _, v in s]
    arms = panel([(baseline, values[0], COLORS[0], ""), (candidate, values[1], COLORS[1], "")],
                 min(allv), max(allv), "primary metric per arm", False)
    diff = [(lk["observations"], lk["difference"]) for lk in looks]
    ci_lo = [(lk["observations"], lk["ci"][0]) for lk in looks if lk["ci"][0] is not None]
    ci_hi = [(lk["observations"], lk["ci"][1]) for lk in looks if lk["ci"][1] is not None]
    cs_lo = [(lk["observations"], lk["confidence_sequence"][0]) for lk in looks if lk["confidence_sequence"][0] is not None]
    cs_hi = [(lk["observations"], lk["confidence_sequence"][1]) for lk in looks if lk["confidence_sequence"][1] is not None]
    bounds = [v for s in (diff, ci_lo, ci_hi, cs_lo, cs_hi) for _, v in s] + [0.0]
    lo, hi = max(min(bounds), -1.5), min(max(bounds), 1.5)
    difference = panel([("difference", diff, COLORS[2], ""), ("95% interval (one look)", ci_lo, COLORS[4], "4 3"),
                        ("", ci_hi, COLORS[4], "4 3"), ("always-valid sequence", cs_lo, COLORS[3], "2 2"),
                        ("", cs_hi, COLORS[3], "2 2")], lo, hi, "difference, candidate minus baseline", True)
    return f'<div id="{h(element_id)}">{arms}<br>{difference}</div>'


def render(report: dict[str, Any]) -> str:
    """The experiment page for ``report`` (app.ab.report.analyse's output)."""
    srm = report["srm"]
    srm_html = (f'<p id="srm" class="{"alarm" if srm.get("alarm") else "ok"}">Sample ratio: '
                f'{"MISMATCH: do not trust any result" if srm.get("alarm") else "ok"} (chi-squared p = {_f(srm.get("p_value"))}, '
                f'units {h(srm.get("observed"))}, expected {h(srm.get("expected"))})</p>')
    power = report["power"]
    parts = [f"<h1>Experiment {h(report['experiment'])}</h1>",
             f'<p class="muted">Clients ask for <code>{h(report["public_model"])}</code>; arms {h(report["arms"])}; '
             f'split {h(report["weights"])}; primary metric <b>{h(report["primary"])}</b> '
             f'({"always-valid sequential test" if report["sequential"] else "fixed-horizon test"}, alpha {report["alpha"]}); '
             f'report of {h(report["generated"])}.</p>',
             f'<p id="power">Power analysis: {power["planned_units_per_arm"]} units per arm for {power["power"]:.0%} power '
             f'to detect a {power["mde_relative"]:.0%} relative change.</p>', srm_html]
    for arm, d in report["decisions"].items():
        winner = f", winner <b>{h(d['winner'])}</b>" if d["winner"] else ""
        parts.append(f'<h2>{h(report["baseline"])} vs {h(arm)}</h2><p class="decision" id="decision-{h(arm)}">'
                     f'{h(d["outcome"])}{winner}</p><ul id="reasons-{h(arm)}">'
                     + "".join(f"<li>{h(r)}</li>" for r in d["reasons"]) + "</ul>")
        rows = "".join(
            f"<tr><td>{h(c['metric'])}</td><td>{_f(c['baseline'])}</td><td>{_f(c['candidate'])}</td>"
            f"<td>{_f(c['difference'])}</td><td>[{_f(c['ci'][0])}, {_f(c['ci'][1])}]</td><td>{_f(c['relative'])}</td>"
            f"<td>{_f(c['n_baseline'])} / {_f(c['n_candidate'])}</td><td>{_f(c['p_value'])}</td><td>{_f(c['p_adjusted'])}</td>"
            f"<td>{h(c['test'])}</td></tr>" for c in report["comparisons"][arm])
        parts.append(f'<table id="comparisons-{h(arm)}"><tr><th>metric</th><th>{h(report["baseline"])}</th><th>{h(arm)}</th>'
                     "<th>difference</th><th>95% interval</th><th>relative</th><th>n</th><th>p</th><th>p (Holm)</th>"
                     f"<th>test</th></tr>{rows}</table>")
        parts.append(chart(report["timeline"][arm], report["baseline"], arm, f"chart-{arm}"))
    rows = "".join(
        f"<tr><td>{h(arm)}</td><td>{s['units']}</td><td>{s['requests']}</td><td>{s['errors']}</td><td>{s['feedback']}</td>"
        f"<td>{_f(s['thumbs_up_rate'])}</td><td>{_f(s['mean_rating'])}</td><td>{_f(s['domain_correct'])}</td>"
        f"<td>{_f(s['groundedness'])}</td><td>{_f(s['e2e_ms_p50'], 4)}</td><td>{_f(s['e2e_ms_p95'], 4)}</td>"
        f"<td>{_f(s['ttft_ms_p50'], 4)}</td></tr>" for arm, s in report["per_arm"].items())
    parts.append('<h2>Arms</h2><table id="arms"><tr><th>arm</th><th>units</th><th>requests</th><th>errors</th>'
                 "<th>feedback</th><th>thumbs up</th><th>rating</th><th>domain correct</th><th>groundedness</th>"
                 f"<th>p50 ms</th><th>p95 ms</th><th>TTFT p50 ms</th></tr>{rows}</table>")
    sh = report["shadow"]
    parts.append(f'<h2>Shadow</h2><p id="shadow">{h(sh) if sh.get("calls") else "No shadow calls."}</p>')
    parts.append('<h2>Split changes</h2><ul id="splits">' + "".join(
        f"<li>{h(s['at'])}: {h(s['weights'])} ({h(s['reason'])})</li>" for s in report["splits"]) + "</ul>")
    return html_document(f"{TITLE}: {report['experiment']}", "".join(parts), css=CSS)


def create_app(accounts: AccountStore, experiments: Callable[[], list[str]],
               report_of: Callable[[str], dict[str, Any] | None]) -> FastAPI:
    """The dashboard app; ``report_of(name)`` is the report of an experiment (None: no such experiment)."""
    auth = WebAuth(accounts, "analyst", "ab_session", TITLE)

    def check(request: Request) -> None:
        if request.url.path not in OPEN_PATHS:
            request.state.user = auth.user(request)

    app = new_app(TITLE, dependencies=[Depends(check)])
    auth.mount(app, CSS)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        names = experiments()
        items = "".join(f'<li><a href="/experiments/{h(n)}">{h(n)}</a></li>' for n in names) or \
            "<li>No experiment has recorded a request yet.</li>"
        return HTMLResponse(html_document(TITLE, f'<h1>{TITLE}</h1><ul id="experiments">{items}</ul>', css=CSS))

    @app.get("/experiments/{name}", response_class=HTMLResponse)
    def page(name: str) -> Any:
        report = report_of(name)
        if report is None:
            return HTMLResponse(html_document(TITLE, f"<h1>No experiment {h(name)}</h1>", css=CSS), status_code=404)
        return HTMLResponse(render(report))

    @app.get("/api/experiments/{name}")
    def api(name: str) -> Any:
        report = report_of(name)
        if report is None:
            return json_error(404, f"no experiment {name!r} in the experiment database")
        return report

    return app


__all__ = ["create_app", "render", "chart"]
