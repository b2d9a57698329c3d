"""The console's URLs: each page and the JSON under /api/ it is rendered from, and the
actions (POST), each confirmed first and checked by security.Guard."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from novajobs.console import actions, assets, data, opspages, pages
from novajobs.console.server import (
    Request,
    Response,
    Route,
    html_response,
    json_response,
    redirect,
)

if TYPE_CHECKING:
    from novajobs.console.server import Console

SEG = r"[^/]+"


def table(c: Console) -> list[tuple[str, re.Pattern[str], Route]]:
    """(method, path pattern, handler); a page and its /api/ twin share one handler."""
    views = Views(c)
    routes: list[tuple[str, str, Route]] = [
        ("GET", "/healthz", lambda req: Response(200, b"ok\n", "text/plain")),
        ("GET", "/readyz", views.ready),
        ("GET", "/static/console.css", lambda req: Response(200, assets.CSS.encode(),
                                                            "text/css")),
        ("GET", "/static/console.js", lambda req: Response(200, assets.JS.encode(),
                                                           "text/javascript")),
        ("GET", "/login", views.login_form),
        ("POST", "/login", views.login),
        ("POST", "/logout", views.logout),
    ]
    for prefix in ("", "/api"):
        routes += [
            ("GET", prefix + "/" + ("jobs" if prefix else ""), views.jobs),
            ("GET", f"{prefix}/jobs/{SEG}", views.job),
            ("GET", f"{prefix}/runs/{SEG}/{SEG}", views.run),
            ("GET", f"{prefix}/triggers/{SEG}", views.trigger),
            ("GET", f"{prefix}/streams", views.streams),
            ("GET", f"{prefix}/streams/{SEG}/dlq", views.dlq),
            ("GET", f"{prefix}/locks", views.locks),
            ("POST", f"{prefix}/jobs/{SEG}/trigger", views.act(views.do_trigger)),
            ("POST", f"{prefix}/jobs/{SEG}/stop", views.act(views.do_stop)),
            ("POST", f"{prefix}/locks/release", views.act(views.do_release)),
            ("POST", f"{prefix}/streams/{SEG}/dlq/{SEG}", views.act(views.do_dlq)),
        ]
    routes.append(("GET", "/api/triggers", views.trigger_list))
    return [(m, re.compile(p), views.readable(h) if m == "GET" else h) for m, p, h in routes]


def _args(req: Request) -> list[str]:
    return req.parts[1:] if req.api else req.parts


class Views:
    def __init__(self, c: Console) -> None:
        self.c = c

    def readable(self, route: Route) -> Route:
        """GET pages: on a non-loopback bind only with the token (not the probes, assets
        and the log-in page)."""
        open_paths = ("/healthz", "/readyz", "/login", "/static/")

        def guarded(req: Request) -> Response:
            if req.path.startswith(open_paths) or self.c.guard.may_read(req.headers):
                return route(req)
            return json_response({"error": "log in first"}, 401) if req.api else redirect(
                "/login")

        return guarded

    def out(self, req: Request, payload: Any, html: str) -> Response:
        return json_response(payload) if req.api else html_response(html)

    # -- pages ------------------------------------------------------------------------
    def ready(self, req: Request) -> Response:
        self.c.redis.ping()
        return Response(200, b"ready\n", "text/plain")

    def jobs(self, req: Request) -> Response:
        rows = data.jobs_overview(self.c.redis, self.c.settings)
        triggers = [t.to_json(after=10**9) for t in self.c.triggers.all()]
        return self.out(req, rows, pages.jobs_page(self.c.page(req), rows, triggers))

    def job(self, req: Request) -> Response:
        detail = data.job_detail(self.c.redis, self.c.settings, _args(req)[1])
        return self.out(req, detail, pages.job_page(self.c.page(req), detail))

    def run(self, req: Request) -> Response:
        _, unit, run_id = _args(req)
        detail = data.run_detail(self.c.redis, self.c.settings, unit, run_id)
        if detail is None:
            raise actions.ActionError(f"no run {run_id} of {unit} is recorded", 404)
        return self.out(req, detail, pages.run_page(self.c.page(req), unit, detail))

    def trigger(self, req: Request) -> Response:
        found = self.c.triggers.get(_args(req)[1])
        if found is None:
            raise actions.ActionError("no such run started from this console", 404)
        after = int(req.query.get("after", "0") or 0)
        payload = found.to_json(after)
        return self.out(req, payload, pages.trigger_page(self.c.page(req), payload))

    def trigger_list(self, req: Request) -> Response:
        return json_response([t.to_json(after=10**9) for t in self.c.triggers.all()])

    def streams(self, req: Request) -> Response:
        rows = data.streams(self.c.redis, self.c.settings)
        return self.out(req, rows, opspages.streams_page(self.c.page(req), rows))

    def dlq(self, req: Request) -> Response:
        stream = self._stream(_args(req)[1])
        limit = min(int(req.query.get("limit", "50") or 50), 1000)
        letters = data.dead_letters(self.c.redis, self.c.settings, stream, limit,
                                    req.query.get("from", "-"))
        return self.out(req, letters, opspages.dlq_page(self.c.page(req), letters))

    def locks(self, req: Request) -> Response:
        held = data.locks(self.c.redis, self.c.settings)
        stale = data.stale_run_ids(self.c.redis, self.c.settings)
        payload = [{**lock, "stale": lock["run_id"] in stale} for lock in held]
        return self.out(req, payload, opspages.locks_page(self.c.page(req), held, stale))

    # -- log in / out -----------------------------------------------------------------
    def login_form(self, req: Request) -> Response:
        return html_response(opspages.login_page(self.c.page(req)))

    def login(self, req: Request) -> Response:
        guard = self.c.guard
        if not guard.same_origin(req.headers):
            return html_response(opspages.login_page(self.c.page(req), "cross-site log-in "
                                                     "refused"), 403)
        if not guard.token_ok(str(req.form.get("token", ""))):
            return html_response(opspages.login_page(self.c.page(req), "wrong token"), 401)
        return redirect("/", **{"Set-Cookie": guard.session_cookie()})

    def logout(self, req: Request) -> Response:
        guard = self.c.guard
        if guard.how_authenticated(req.headers) == "cookie":
            refusal = guard.cookie_refusal(req.headers, req.form.get("csrf"))
            if refusal is not None:
                return self.c.error(req, *refusal)
        return redirect("/", **{"Set-Cookie": "novajobs_console=; Path=/; Max-Age=0; "
                                              "HttpOnly; SameSite=Strict"})

    # -- actions ----------------------------------------------------------------------
    def act(self, action: Callable[[Request], tuple[str, Callable[[], Response]]]) -> Route:
        """Checks every action goes through: token, CSRF, read-only; then the
        confirmation step; then the action, answered as JSON or as a result page."""

        def route(req: Request) -> Response:
            csrf = req.form.get("csrf") or req.headers.get("X-CSRF-Token")
            refusal = self.c.guard.action_refusal(req.headers, csrf)
            if refusal is not None:
                return self.c.error(req, *refusal)
            question, run = action(req)
            confirmed = req.form.get("confirm") in (True, "yes", "true")
            if not confirmed:
                if req.api:
                    return json_response({"error": 'not confirmed: send "confirm": true',
                                          "question": question}, 400)
                fields = {k: str(v) for k, v in req.form.items() if k not in ("csrf", "confirm")}
                page = opspages.confirm_page(self.c.page(req), question, req.path, fields)
                return html_response(page)
            return run()

        return route

    def do_trigger(self, req: Request) -> tuple[str, Callable[[], Response]]:
        job = _args(req)[1]
        dry = str(req.form.get("dry_run", "")) in ("1", "true", "True")
        kind = "a dry run of" if dry else ""
        question = f"Run {kind} {job} now, on the console's host?".replace("  ", " ")

        def run() -> Response:
            trigger = self.c.triggers.start(job, dry_run=dry)
            payload = trigger.to_json()
            return json_response(payload, 202) if req.api else redirect(
                f"/triggers/{trigger.id}")

        return question, run

    def do_stop(self, req: Request) -> tuple[str, Callable[[], Response]]:
        job, unit = _args(req)[1], req.form.get("unit") or None

        def run() -> Response:
            asked = actions.stop_job(self.c.redis, self.c.settings, job, unit)
            lines = [f"asked run {a['run_id']} of {a['unit']} (host {a['host']} pid "
                     f"{a['pid']}) to stop at its next safe point" for a in asked]
            return self.out(req, {"asked": asked}, opspages.result_page(
                self.c.page(req), "Stop requested", lines, f"/jobs/{job}"))

        return f"Stop the running run of {unit or job} at its next safe point?", run

    def do_release(self, req: Request) -> tuple[str, Callable[[], Response]]:
        key, run_id = str(req.form.get("key", "")), str(req.form.get("run_id", ""))

        def run() -> Response:
            done = actions.release_stale_lock(self.c.redis, self.c.settings, key, run_id)
            return self.out(req, done, opspages.result_page(
                self.c.page(req), "Lock released",
                [f"released {done['released']} (was held by {done['was_held_by']})"]))

        return f"Release {key}, held by the stale run {run_id}?", run

    def do_dlq(self, req: Request) -> tuple[str, Callable[[], Response]]:
        stream, verb = self._stream(_args(req)[1]), _args(req)[3]
        if verb not in ("replay", "purge"):
            raise actions.ActionError(f"no dead-letter action {verb!r}", 404)
        selection = actions.dlq_selection(verb, req.form)
        r, settings = self.c.redis, self.c.settings
        would = actions.dlq_action(r, settings, verb, stream, selection, dry_run=True)
        where = f"into {stream}" if verb == "replay" else "for good"
        filters = ", ".join(f"{k}={req.form[k]}" for k in actions.FILTERS if req.form.get(k))

        def run() -> Response:
            done = actions.dlq_action(r, settings, verb, stream, selection)
            text = ", ".join(f"{k} {v}" for k, v in done.items())
            return self.out(req, done, opspages.result_page(
                self.c.page(req), f"Dead letters: {verb}", [text],
                f"/streams/{stream}/dlq"))

        question = (f"{verb.capitalize()} {would['would_move']} dead letter(s) of {stream} "
                    f"{where}?" + (f" (selected by {filters})" if filters else ""))
        return question, run

    def _stream(self, stream: str) -> str:
        if not data.known_stream(self.c.settings, stream):
            raise actions.ActionError(f"stream {stream!r} is not configured "
                                      "(setting stream_handlers)", 404)
        return stream
