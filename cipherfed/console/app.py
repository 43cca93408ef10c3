"""The console's web app: Starlette routes, server-rendered Jinja2 pages, live fragments over
server-sent events.

Why it is safe to run on a coordinator's or auditor's workstation:
- it listens on 127.0.0.1 only, and refuses requests whose Host is not that address (so a web
  page elsewhere cannot reach it through DNS rebinding);
- every request needs the random token printed at start (first as ``?token=``, then as an
  HttpOnly SameSite=Strict cookie; the token is then removed from the address bar);
- it is read-only: only GET and HEAD, and the only calls it makes are the read-only RPCs
  (ListJobs, GetJobStatus, ListMembers, ServerInfo) with the admin's or auditor's certificate;
- every value is escaped by Jinja2's autoescaping; the content security policy allows no
  script or style from anywhere but the console itself, and no framing.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import grpc
from cryptography import x509
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.report import build_report
from cipherfed.console import views
from protocol import cipherfed_pb2 as pb

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
# A loopback name in the Host header, any port (an SSH port forward changes it); any other name
# means a page elsewhere is reaching the console through DNS rebinding.
LOOPBACK_HOST = re.compile(r"^(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?$")
KEEPALIVE_EVERY = 15  # SSE comment lines keep proxies and the browser from timing out


@dataclass
class ConsoleSettings:
    token: str
    port: int
    stub: Any  # ConsortiumStub over mTLS with the admin's or auditor's certificate
    audit_dir: Path | None = None
    ca_cert: x509.Certificate | None = None
    refresh_s: float = 1.0

    @property
    def cookie(self) -> str:
        return f"cipherfed_console_{self.port}"  # one per console: cookies do not separate ports


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Guard:
    """Host check, token check, read-only methods and security headers, before any route runs
    (plain ASGI middleware, so server-sent event streams pass through untouched)."""

    def __init__(self, app: ASGIApp, settings: ConsoleSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self.refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        report = request.url.path == "/audit/report"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                _set_headers(MutableHeaders(scope=message), report)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def refusal(self, request: Request) -> Response | None:
        """The response that ends this request here, or None to let it through."""
        if not LOOPBACK_HOST.match(request.headers.get("host", "")):
            return _plain(403, "forbidden: the console answers only to 127.0.0.1")
        if request.method not in ("GET", "HEAD"):
            return _plain(405, "the console is read-only")
        token = self.settings.token.encode()
        given = request.query_params.get("token", "")
        if given and secrets.compare_digest(given.encode(), token):
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response: Response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(self.settings.cookie, self.settings.token, httponly=True, samesite="strict", path="/")
            _set_headers(response.headers, False)
            return response
        if not secrets.compare_digest(request.cookies.get(self.settings.cookie, "").encode(), token):
            return _plain(401, "unauthorized: open the URL with ?token=... that `cipherfed console` printed")
        return None


def _plain(status: int, text: str) -> Response:
    response = Response(text + "\n", status_code=status, media_type="text/plain")
    _set_headers(response.headers, False)
    return response


def _set_headers(headers: MutableHeaders, report: bool) -> None:
    headers["Content-Security-Policy"] = REPORT_CSP if report else CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers["Cache-Control"] = "no-store"


def build_app(settings: ConsoleSettings) -> Starlette:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)  # escape everything
    stub = settings.stub

    def page(name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**values), status_code=status_code)

    def fragment(name: str, **values: Any) -> Markup:
        return Markup(env.get_template(name).render(**values))  # noqa: S704 - output of an autoescaping template

    def rpc_error(exc: grpc.RpcError) -> str:
        return f"the aggregator did not answer: {exc.code().name}: {exc.details()}"

    def server_info() -> pb.ServerInfoReply | None:
        try:
            return stub.ServerInfo(pb.ServerInfoRequest(), timeout=views.RPC_TIMEOUT_S)
        except grpc.RpcError:
            return None

    def render_jobs() -> Markup:
        try:
            jobs = list(stub.ListJobs(pb.ListJobsRequest(), timeout=views.RPC_TIMEOUT_S).jobs)
        except grpc.RpcError as exc:
            return fragment("error.html", message=rpc_error(exc))
        jobs.sort(key=lambda j: (j.created, j.job_id), reverse=True)
        return fragment("jobs_table.html", jobs=jobs)

    def render_job(job_id: str) -> Markup:
        try:
            status = stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=views.RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            return fragment("error.html", message=rpc_error(exc))
        return fragment("job_live.html", job=views.job_view(status))

    async def live(request: Request, render: Callable[[], Markup]) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            last, quiet = None, 0
            while not await request.is_disconnected():
                html = await anyio.to_thread.run_sync(render)
                if html != last:
                    last, quiet = html, 0
                    yield "event: update\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"
                else:
                    quiet += 1
                    if quiet * settings.refresh_s >= KEEPALIVE_EVERY:
                        quiet = 0
                        yield ": keepalive\n\n"
                await anyio.sleep(settings.refresh_s)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    async def index(request: Request) -> Response:
        return RedirectResponse("/jobs", status_code=303)

    def jobs_page(request: Request) -> HTMLResponse:
        return page("jobs.html", active="jobs", info=server_info(), table=render_jobs())

    async def jobs_live(request: Request) -> StreamingResponse:
        return await live(request, render_jobs)

    def job_page(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not views.JOB_ID.match(job_id):
            return page("error_page.html", 404, active="jobs", info=None, message="not a job id")
        return page("job.html", active="jobs", info=server_info(), job_id=job_id, body=render_job(job_id))

    async def job_live(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not views.JOB_ID.match(job_id):
            return _plain(404, "not a job id")
        return await live(request, lambda: render_job(job_id))

    def members_page(request: Request) -> HTMLResponse:
        try:
            reply = stub.ListMembers(pb.ListMembersRequest(), timeout=views.RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            return page("error_page.html", 502, active="members", info=server_info(), message=rpc_error(exc))
        return page(
            "members.html",
            active="members",
            info=server_info(),
            members=views.members(reply),
            policy_loaded=reply.policy_loaded,
        )

    def audit_page(request: Request) -> HTMLResponse:
        view = views.audit_view(settings.audit_dir, settings.ca_cert) if settings.audit_dir else None
        return page("audit.html", active="audit", info=server_info(), view=view, ca=settings.ca_cert is not None)

    def audit_report(request: Request) -> Response:
        if settings.audit_dir is None:
            return _plain(404, "start the console with --audit-dir to open the compliance report")
        paths, _ = views.audit_paths(settings.audit_dir)
        if not paths:
            return _plain(404, f"no audit logs (*.jsonl) under {settings.audit_dir}")
        html, _verification = build_report(paths, settings.ca_cert)
        return HTMLResponse(html)

    routes = [
        Route("/", index),
        Route("/jobs", jobs_page),
        Route("/jobs/live", jobs_live),
        Route("/jobs/{job_id}", job_page),
        Route("/jobs/{job_id}/live", job_live),
        Route("/members", members_page),
        Route("/audit", audit_page),
        Route("/audit/report", audit_report),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, settings=settings)])
