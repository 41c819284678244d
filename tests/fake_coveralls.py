"""A real HTTP server on 127.0.0.1 standing in for coveralls.io.

It speaks the two endpoints a client uses: ``POST /api/v1/jobs`` (multipart/form-data with a
``json_file`` part, gzip-compressed or plain JSON) and ``POST /webhook`` (JSON). Each endpoint
answers from a script of :class:`Answer` objects, one per request, the last one repeated; an
answer may wait before it is sent (to make the client time out) and carry headers of its own
(a redirect's ``Location``). Every request is recorded, decoded, for the test to inspect.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JOB_OK = {"message": "Job #12.1", "url": "https://coveralls.example/jobs/4242"}
REFUSED = {"message": "Couldn't find a repository matching this job.", "error": True}
ERROR_PAGE = "<html><body><h1>We're sorry, but something went wrong (500)</h1></body></html>"


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=lambda: dict(JOB_OK))
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, str):
            return self.body.encode(), "text/html; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    #: the decoded JSON of the job (from the json_file part) or of the webhook call
    document: Any
    #: for a job: the json_file part's headers and whether it came gzip-compressed
    part_type: str = ""
    part_name: str = ""
    gzipped: bool = False


def _json_file(content_type: str, body: bytes) -> tuple[Any, str, str, bool]:
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "json_file":
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            gzipped = data[:2] == b"\x1f\x8b"
            text = gzip.decompress(data) if gzipped else data
            return json.loads(text), part.get_content_type(), "json_file", gzipped
    raise ValueError("no json_file part")


class FakeCoveralls:
    """``with FakeCoveralls() as server:`` ... ``server.url``, ``server.jobs``, ``server.hooks``."""

    def __init__(self) -> None:
        self.job_script: list[Answer] = [Answer()]
        self.hook_script: list[Answer] = [Answer(body={"done": True, "url": "u", "jobs": 2})]
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def jobs(self) -> list[Received]:
        return [r for r in self.received if r.path == "/api/v1/jobs"]

    @property
    def hooks(self) -> list[Received]:
        return [r for r in self.received if r.path == "/webhook"]

    def __enter__(self) -> FakeCoveralls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, path: str, count: int) -> Answer:
        script = self.job_script if path == "/api/v1/jobs" else self.hook_script
        return script[min(count, len(script) - 1)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output quiet

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path
                if path not in ("/api/v1/jobs", "/webhook"):
                    self.send_error(404)
                    return
                record = Received(path, dict(self.headers.items()), body, None)
                if path == "/api/v1/jobs":
                    ctype = self.headers.get("Content-Type", "")
                    record.document, record.part_type, record.part_name, record.gzipped = (
                        _json_file(ctype, body)
                    )
                else:
                    record.document = json.loads(body)
                with fake._lock:
                    count = len([r for r in fake.received if r.path == path])
                    fake.received.append(record)
                answer = fake._next(path, count)
                if answer.delay:
                    time.sleep(answer.delay)
                data, ctype = answer.encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting: that is what a slow answer is for

        return Handler
