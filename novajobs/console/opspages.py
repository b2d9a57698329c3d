"""The console's other pages: streams and dead letters, locks, log in, the confirmation
step of every action, and an action's result."""

from __future__ import annotations

import time
from typing import Any

from novajobs.console.pages import Page, e, q
from novajobs.textview import age


def streams_page(page: Page, streams: list[dict[str, Any]]) -> str:
    head = ("<tr><th>Stream</th><th>Handler</th><th>Length</th><th>Lag</th><th>Pending</th>"
            "<th>Consumers</th><th>Dead letters</th><th>Retries due / later</th></tr>")
    rows = []
    for s in streams:
        g = s["group"] or {}
        rows.append(
            f'<tr data-stream="{e(s["stream"])}"><td>{e(s["stream"])}</td>'
            f'<td>{e(s["handler"])}</td><td>{e(s["length"])}</td><td>{e(g.get("lag", "-"))}'
            f'</td><td>{e(g.get("pending", "-"))}</td><td>{e(g.get("consumers", "-"))}</td>'
            f'<td><a href="/streams/{q(s["stream"])}/dlq">{e(s["dead_letters"])}</a></td>'
            f'<td>{e(s["retries_due"])} / {e(s["retries_later"])}</td></tr>')
    return page.layout("Streams", f'<table class="streams">{head}{"".join(rows)}</table>')


def dlq_page(page: Page, data: dict[str, Any]) -> str:
    stream = data["stream"]
    base = f"/streams/{q(stream)}/dlq"
    rows = []
    for d in data["entries"]:
        fields = " ".join(f"{k}={v}" for k, v in d["fields"].items())
        buttons = page.actions([
            page.form(f"{base}/replay", "Replay", {"ids": d["id"]}),
            page.form(f"{base}/purge", "Purge", {"ids": d["id"]}, danger=True),
        ])
        rows.append(f'<tr data-id="{e(d["id"])}"><td><code>{e(d["id"])}</code></td>'
                    f'<td>{e(d["attempts"])}</td><td>{e(d["failed_at"])}</td>'
                    f'<td class="error">{e(d["error"])}</td><td><code>{e(fields)}</code></td>'
                    f'<td class="actions">{buttons}</td></tr>')
    every = page.actions([page.form(f"{base}/replay", "Replay all", {"all": "1"}),
                          page.form(f"{base}/purge", "Purge all", {"all": "1"}, danger=True),
                          _filter_form(page, base)])
    shown = len(data["entries"])
    part = f", {shown} below" if shown < data["total"] else ""
    more = (f' <a class="next" href="{base}?from={q(data["next_from"])}">next {shown} →</a>'
            if data["next_from"] else "")
    body = (f'<p>{e(data["total"])} dead letters in <code>dlq:{e(stream)}</code>{part} '
            f'(oldest first).{more}</p>'
            f'<div class="every">{every}</div>'
            '<table class="dlq"><tr><th>Id</th><th>Attempts</th><th>Failed at</th>'
            f'<th>Error</th><th>Fields</th><th></th></tr>{"".join(rows)}</table>')
    return page.layout(f"Dead letters of {stream}", body)


def _filter_form(page: Page, base: str) -> str:
    """Replay or purge by the CLI's filters (`dlq replay --error ... --since ...`)."""
    fields = (("error", "error contains", "text"), ("error_regex", "error matches", "text"),
              ("since", "since (2h, ISO)", "text"), ("until", "until", "text"),
              ("min_attempts", "attempts ≥", "number"), ("max_attempts", "attempts ≤", "number"))
    inputs = "".join(f'<label>{e(label)} <input name="{name}" type="{kind}" size="10"></label> '
                     for name, label, kind in fields)
    return (f'<form method="post" class="filters" action="{e(base)}/replay"><fieldset>'
            '<legend>Or select by filter (as <code>novajobs dlq replay|purge</code> '
            'takes them; the next page says how many match)</legend>'
            f'<input type="hidden" name="csrf" value="{e(page.csrf)}">{inputs}'
            '<button type="submit">Replay matching</button> '
            f'<button type="submit" class="danger" formaction="{e(base)}/purge">'
            'Purge matching</button></fieldset></form>')


def locks_page(page: Page, locks: list[dict[str, Any]], stale_runs: set[str]) -> str:
    rows = []
    for lock in locks:
        button = ""
        if lock["run_id"] in stale_runs:
            button = page.actions([page.form("/locks/release", "Release (stale)",
                                             {"key": lock["key"], "run_id": lock["run_id"]},
                                             danger=True)])
        rows.append(f'<tr><td><code>{e(lock["key"])}</code></td><td>{e(lock["host"])}</td>'
                    f'<td>{e(lock["pid"])}</td><td>{e(lock["run_id"])}</td>'
                    f'<td>{age(lock["age_sec"])}</td><td>{e(lock["ttl_sec"])} s</td>'
                    f'<td>{button}</td></tr>')
    table = ('<table><tr><th>Lock</th><th>Host</th><th>Pid</th><th>Run</th><th>Held for</th>'
             f'<th>Expires in</th><th></th></tr>{"".join(rows)}</table>') if rows else (
        "<p>No lock is held.</p>")
    return page.layout("Locks", table)


def login_page(page: Page, problem: str = "") -> str:
    note = f'<p class="error">{e(problem)}</p>' if problem else ""
    return page.layout("Log in", (
        f'{note}<form method="post" action="/login"><label>Console token '
        '<input type="password" name="token" autocomplete="current-password" autofocus>'
        '</label> <button type="submit">Log in</button></form>'
        '<p class="muted">The token is the setting <code>console_token</code>, or the one '
        '<code>novajobs console</code> printed when it started.</p>'))


def confirm_page(page: Page, question: str, action: str, fields: dict[str, str]) -> str:
    body = (f'<p class="question">{e(question)}</p>'
            + page.form(action, "Yes, do it", {**fields, "confirm": "yes"}, confirm=True)
            + f' <a href="{e(back_from(action))}">Cancel</a>')
    return page.layout("Confirm", body)


def back_from(action: str) -> str:
    """The page an action was asked from: a stream's dead letters, the locks, the jobs."""
    parts = action.split("/")
    if action.startswith("/streams/") and len(parts) > 2:
        return f"/streams/{parts[2]}/dlq"
    return "/locks" if action.startswith("/locks/") else "/"


def result_page(page: Page, title: str, lines: list[str], back: str = "/") -> str:
    items = "".join(f"<li>{e(line)}</li>" for line in lines)
    return page.layout(title, f'<ul class="result">{items}</ul><p><a href="{e(back)}">Back</a>'
                              f' · {e(time.strftime("%H:%M:%S"))}</p>')


def error_page(page: Page, status: int, message: str) -> str:
    return page.layout(f"{status}", f'<p class="error">{e(message)}</p><p><a href="/">Jobs'
                                    '</a></p>')
