"""The console's HTML, rendered on the server from the data the API returns (data.py).

No template engine: a handful of pages, every value through ``html.escape``. Forms post
to the action URLs with the CSRF token; every action is confirmed on a page of its own
before it runs. The only script (assets.JS) follows a run started here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from html import escape
from typing import Any
from urllib.parse import quote

from novajobs.console.chart import BADGE_COLOURS, runs_svg
from novajobs.runlog import line_text
from novajobs.textview import age, duration, since


def e(value: Any) -> str:
    return "" if value is None else escape(str(value))


def q(value: str) -> str:
    return quote(value, safe="")


class Page:
    """What every page needs to know: may the viewer act, and the CSRF token."""

    def __init__(self, *, can_act: bool, logged_in: bool, csrf: str, read_only: bool) -> None:
        self.can_act, self.logged_in, self.csrf, self.read_only = (
            can_act, logged_in, csrf, read_only)

    def layout(self, title: str, body: str, *, refresh: int | None = None) -> str:
        meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
        if self.read_only:
            who = '<span class="muted">read-only</span>'
        elif self.logged_in:
            who = self.form("/logout", "Log out", confirm=False)
        else:
            who = '<a href="/login">Log in to act</a>'
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<title>{e(title)} · novajobs</title>{meta}'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="stylesheet" href="/static/console.css"></head><body>'
            '<header><a class="brand" href="/">novajobs</a><nav>'
            '<a href="/">Jobs</a><a href="/streams">Streams</a><a href="/locks">Locks</a>'
            f'</nav><div class="who">{who}</div></header><main><h1>{e(title)}</h1>{body}'
            '</main></body></html>'
        )

    def form(self, action: str, label: str, fields: dict[str, str] | None = None, *,
             confirm: bool = True, danger: bool = False) -> str:
        hidden = {"csrf": self.csrf, **(fields or {})}
        if not confirm:
            hidden["confirm"] = "yes"
        inputs = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">'
                         for k, v in hidden.items())
        cls = "danger" if danger else ""
        return (f'<form method="post" action="{e(action)}" class="inline">{inputs}'
                f'<button type="submit" class="{cls}">{e(label)}</button></form>')

    def actions(self, buttons: Iterable[str]) -> str:
        return "".join(buttons) if self.can_act else ""


def shown_as(outcome: str | None, state: str | None = None) -> str:
    """What a badge says: running / stale / never run, else the last outcome."""
    return (state if state in ("running", "stale", "never_run") else outcome) or "never_run"


def badge(outcome: str | None, state: str | None = None, count: int | None = None) -> str:
    """The outcome (or running / stale / never run) in its colour (assets.CSS: no inline
    styles under the Content Security Policy)."""
    text = shown_as(outcome, state)
    tone = text if text in BADGE_COLOURS else "failed"
    label = text.replace("_", " ") + ("" if count is None else f" {count}")
    return f'<span class="badge o-{e(tone)}">{e(label)}</span>'


def summary(rows: list[dict[str, Any]]) -> str:
    """One line over the table: how many jobs last ended how, failures first."""
    counts: dict[str, int] = {}
    for r in rows:
        text = shown_as(r["outcome"], r["state"])
        counts[text] = counts.get(text, 0) + 1
    calm = ("running", "success", "nothing_to_do", "dry_run", "skipped", "never_run")

    def order(item: tuple[str, int]) -> tuple[int, str]:
        return (calm.index(item[0]) + 1 if item[0] in calm else 0, item[0])

    badges = " ".join(badge(text, count=n) for text, n in sorted(counts.items(), key=order))
    jobs = len({r["job"] for r in rows})
    units = f" ({len(rows)} units)" if len(rows) != jobs else ""
    return (f'<p class="summary">{jobs} jobs{units}: {badges} <span class="muted">· as of '
            f'{time.strftime("%H:%M:%S", time.gmtime())} UTC (reload for newer)</span></p>')


def next_run(iso: str | None, now: float) -> str:
    ago = since(iso, now)
    return "" if ago is None else f'<span title="{e(iso)}">next in {age(-ago)}</span>'


def when(iso: str | None, now: float, never: str = "-") -> str:
    ago = since(iso, now)
    return never if ago is None else f'<span title="{e(iso)}">{age(ago)} ago</span>'


def jobs_page(page: Page, rows: list[dict[str, Any]], triggers: list[dict[str, Any]]) -> str:
    now = time.time()
    head = ("<tr><th>Job</th><th>Schedule · next run</th><th>Last run</th><th>Took</th>"
            "<th>Last success</th><th>Recent runs</th><th>Lock</th><th></th></tr>")
    body = "".join(_job_row(page, r, now) for r in rows)
    recent = ""
    if triggers:
        items = "".join(
            f'<li><a href="/triggers/{e(t["id"])}">{e(t["job"])}'
            f'{" (dry run)" if t["dry_run"] else ""}</a> — '
            f'{"running" if t["running"] else "exit " + str(t["exit_code"])}'
            f' <span class="muted">· started {age(now - t["started_at"])} ago by '
            f'{e(t["by"])}</span></li>' for t in reversed(triggers))
        recent = f'<h2>Started from this console</h2><ul class="triggers">{items}</ul>'
    return page.layout("Jobs", f'{summary(rows)}<table class="jobs">{head}{body}</table>'
                               f'{recent}')


def _job_row(page: Page, r: dict[str, Any], now: float) -> str:
    job, unit = r["job"], r["unit"]
    when_ran = r["ended_at"] if r["state"] == "ended" else r["started_at"]
    said = r["error"] or r["message"] or r.get("warning") or ""
    buttons = _run_buttons(page, r) + _unit_buttons(page, job, r)
    lock = r.get("lock")
    lock_text = (f'{e(lock["host"])} pid {e(lock["pid"])}<br><span class="muted">lease '
                 f'{age(lock["age_sec"])}, expires in {e(lock["ttl_sec"])} s</span>'
                 if lock else '<span class="muted">free</span>')
    seen = (f'<br><span class="muted">seen {age(r["seen_age_sec"])} ago</span>'
            if r["state"] in ("running", "stale") else "")
    return (
        f'<tr data-unit="{e(unit)}"><td><a href="/jobs/{q(job)}">{e(unit)}</a>'
        f'<div class="muted small">{e(r.get("summary") or "")}</div></td>'
        f'<td><code>{e(r["schedule"] or "-")}</code><br>'
        f'<span class="muted">{next_run(r["next_run_at"], now)}</span></td>'
        f'<td>{badge(r["outcome"], r["state"])} {when(when_ran, now, "")}{seen}'
        f'<div class="said" title="{e(said)}">{e(said)}</div></td>'
        f'<td>{duration(r["duration_ms"])}</td>'
        f'<td>{when(r.get("last_success_at"), now)}</td>'
        f'<td>{runs_svg(r["recent"], "recent runs of " + unit)}</td>'
        f'<td>{lock_text}</td><td class="actions">{page.actions(buttons)}</td></tr>'
    )


def _run_buttons(page: Page, spec: dict[str, Any]) -> list[str]:
    """Run now (and a dry run, for a job that deletes) of a job this version has."""
    if not spec["schedule"]:
        return []
    path = f"/jobs/{q(spec['job'])}/trigger"
    buttons = [page.form(path, "Run now")]
    if spec.get("destructive"):
        buttons.append(page.form(path, "Dry run", {"dry_run": "1"}))
    return buttons


def _unit_buttons(page: Page, job: str, status: dict[str, Any]) -> list[str]:
    """Stop a running run; release the lock a stale one still holds."""
    if status["state"] == "running":
        return [page.form(f"/jobs/{q(job)}/stop", "Stop", {"unit": status["unit"]},
                          danger=True)]
    lock = status.get("lock")
    if status["state"] == "stale" and lock and lock["run_id"] == status["run_id"]:
        return [page.form("/locks/release", "Release lock",
                          {"key": lock["key"], "run_id": lock["run_id"]}, danger=True)]
    return []


def job_page(page: Page, detail: dict[str, Any]) -> str:
    now = time.time()
    parts = [f'<p>{e(detail["summary"])}</p><p><code>{e(detail["schedule"])}</code> · '
             f'{next_run(detail["next_run_at"], now)} '
             f'{page.actions(_run_buttons(page, detail))}</p>']
    if not detail["units"]:
        parts.append("<p>Never run.</p>")
    for unit in detail["units"]:
        s = unit["status"]
        label = "runs of " + s["unit"]
        parts.append(f'<h2>{e(s["unit"])} {badge(s["outcome"], s["state"])} '
                     f'{page.actions(_unit_buttons(page, detail["job"], s))}</h2>'
                     f'{runs_svg(unit["history"], label)}')
        rows = "".join(_history_row(s["unit"], h, now) for h in unit["history"])
        parts.append('<table class="history"><tr><th>Started</th><th>Outcome</th>'
                     '<th>Exit</th><th>Took</th><th>Host</th><th>Run</th><th>Message</th>'
                     f'<th>Error</th></tr>{rows}</table>')
    return page.layout(detail["job"], "".join(parts))


def _history_row(unit: str, h: dict[str, Any], now: float) -> str:
    skips = f' x{h["skips"]}' if h["skips"] > 1 else ""
    run = (f'<a href="/runs/{q(unit)}/{q(h["run_id"])}">{e(h["run_id"][:8])}</a>'
           if h["run_id"] else "")
    dry = " (dry run)" if h["dry_run"] else ""
    return (f'<tr><td>{when(h["started_at"], now)}</td><td>{badge(h["outcome"])}{skips}{dry}'
            f'</td><td>{e(h["exit_code"])}</td><td>{duration(h["duration_ms"])}</td>'
            f'<td>{e(h["host"])}</td><td>{run}</td><td>{e(h["message"])}</td>'
            f'<td class="error">{e(h["error"])}</td></tr>')


def run_page(page: Page, unit: str, detail: dict[str, Any]) -> str:
    run = detail["run"]
    facts = [("outcome", badge(run["outcome"], detail["state"])),
             ("exit code", e(run["exit_code"])), ("took", duration(run["duration_ms"])),
             ("started", e(run["started_at"])), ("ended", e(run["ended_at"])),
             ("host", f'{e(run["host"])} pid {e(run["pid"])}'),
             ("message", e(run["message"])), ("error", e(run["error"])),
             ("warning", e(run["warning"]))]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts if v)
    counters = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>"
                       for k, v in run["counters"].items()) or '<tr><td>none</td></tr>'
    log = ("\n".join(line_text(line, clock_only=True) for line in detail["log"])
           or "(no log lines kept)")
    details = ""
    if detail.get("details"):
        shown = json.dumps(detail["details"], indent=2, ensure_ascii=False, default=str)
        details = f'<h2>Details</h2><pre class="details">{e(shown)}</pre>'
    body = (f'<table class="facts">{rows}</table><h2>Counters</h2>'
            f'<table class="facts">{counters}</table>{details}<h2>Log</h2>'
            f'<pre class="log" id="log">{e(log)}</pre>')
    if detail["state"] == "running" and page.can_act:
        body = page.form(f"/jobs/{q(run['job'])}/stop", "Stop this run",
                         {"unit": unit}, danger=True) + body
    title = f"{unit} run {str(run['run_id'])[:8]}"
    return page.layout(title, body, refresh=3 if detail["state"] == "running" else None)


def trigger_page(page: Page, trigger: dict[str, Any]) -> str:
    dry = " (dry run)" if trigger["dry_run"] else ""
    body = (f'<p id="trigger" data-id="{e(trigger["id"])}">'
            f'Started by {e(trigger["by"])}{dry}, pid {e(trigger["pid"])} · '
            f'<span id="state">{"running" if trigger["running"] else "finished"}</span>'
            f' <span id="exit"></span> <span id="run"></span></p>'
            '<pre class="log" id="log"></pre><script src="/static/console.js"></script>')
    return page.layout(f"{trigger['job']} started here", body)
