"""A small OpenAI-compatible chat-completions server on 127.0.0.1 (stdlib, threaded).

It answers ``POST /v1/chat/completions`` through a *responder*: a callable that gets the request body and returns a
:class:`Reply`. mulcot uses it to replay stored teacher chains when no real teacher is at hand (the demo, clearly
labelled as a replay), and the tests use it with scripted responders (valid and malformed chains, 429, 5xx, slow
answers, dropped connections).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Reply:
    """What to answer: a completion ``text``, or an HTTP error ``status`` (with ``text`` as its error message, when
    given); ``delay_s`` first; ``drop`` closes the connection without an answer; ``raw`` is sent as the whole body
    instead (garbage that is no completion)."""

    text: str | None = None
    raw: bytes | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False


Responder = Callable[[dict[str, Any]], Reply]


def prompt_text(body: dict[str, Any]) -> str:
    """The text parts of the request's last user message."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")


def has_image(body: dict[str, Any]) -> bool:
    content = body["messages"][-1]["content"]
    return isinstance(content, list) and any(p.get("type") == "image_url" for p in content)


_POST_TEXT = re.compile(r"^Text: (.*)$", re.MULTILINE)
_ASPECT = re.compile(r"^Target aspect: (.*)$", re.MULTILINE)


def post_of(body: dict[str, Any]) -> tuple[str, str | None]:
    """(text, aspect) of the post a mulcot prompt is about."""
    prompt = prompt_text(body)
    text = _POST_TEXT.search(prompt)
    aspect = _ASPECT.search(prompt)
    return (text.group(1) if text else ""), (aspect.group(1) if aspect else None)


def completion(body: dict[str, Any], text: str, completion_id: str, model: str = "local") -> dict[str, Any]:
    """A chat.completion answering ``body`` with ``text`` (usage: ~4 characters a token, 85 per image)."""
    prompt = prompt_text(body)
    t_in = len(prompt) // 4 + (85 if has_image(body) else 0)
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", model),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": t_in, "completion_tokens": len(text) // 4, "total_tokens": t_in + len(text) // 4},
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: avoid a 40 ms delayed-ACK stall

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        with self.server.lock:
            self.server.requests.append(
                {
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                    "time": time.time(),
                }
            )
        reply = self.server.responder(body)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if reply.raw is not None:
            self.send_response(reply.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply.raw)))
            self.end_headers()
            self.wfile.write(reply.raw)
            return
        if reply.status != 200:
            message = reply.text or f"scripted HTTP {reply.status}"
            self._send(reply.status, {"error": {"message": message, "type": "error"}}, reply.headers)
            return
        payload = completion(body, reply.text or "", f"chatcmpl-{len(self.server.requests)}", self.server.model)
        self._send(200, payload, reply.headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    responder: Responder
    model: str
    requests: list[dict[str, Any]]
    lock: threading.Lock


class BackgroundServer:
    """An HTTP server (``self._server``) served from a daemon thread: ``start``/``stop`` or ``with``."""

    _server: ThreadingHTTPServer

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ChatServer(BackgroundServer):
    """Serve ``responder`` at ``http://127.0.0.1:PORT/v1`` in a background thread (``port=0``: any free port)."""

    def __init__(self, responder: Responder, *, port: int = 0, model: str = "local"):
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.responder = responder
        self._server.model = model
        self._server.requests = []
        self._server.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._server.requests

