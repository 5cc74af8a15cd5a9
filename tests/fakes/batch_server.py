"""A small OpenAI-compatible Batch API on 127.0.0.1 (stdlib, threaded): ``/v1/files`` and ``/v1/batches``.

- ``POST /v1/files`` (multipart upload, ``purpose=batch``), ``GET /v1/files`` (``purpose`` filter),
  ``GET /v1/files/{id}`` and ``/v1/files/{id}/content``;
- ``POST /v1/batches`` (validates the input file: JSON lines, unique ``custom_id``, one model, the endpoint),
  ``GET /v1/batches/{id}``, ``GET /v1/batches`` (newest first, ``after``/``limit`` cursor),
  ``POST /v1/batches/{id}/cancel``.

A batch moves one step per retrieve: ``validating`` → ``in_progress`` (for ``BatchPlan.polls`` retrieves) →
``completed``, ``expired`` (only the first ``BatchPlan.finish`` requests answered) or ``failed``. Each request line
is answered by a *responder* as in :mod:`mulcot.annotate.chat_server` (a
:class:`~mulcot.annotate.chat_server.Reply`): text goes to
the output file, an HTTP error status to the error file. A plan can shuffle the output, add malformed lines, or
hold the batch in progress until released. The tests talk to it with the unmodified ``openai`` SDK.
"""

from __future__ import annotations

import email
import email.policy
import json
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from mulcot.annotate.chat_server import BackgroundServer, Reply, Responder, completion

__all__ = ["BatchPlan", "BatchServer", "Reply"]


@dataclass
class BatchPlan:
    """How one batch goes: ``polls`` retrieves in progress, then ``outcome``; ``finish`` answered requests when it
    expires (or is cancelled); ``shuffle`` the output lines; ``garbage`` malformed lines mixed in; ``hold`` keeps it
    in progress until :meth:`BatchServer.release`."""

    polls: int = 1
    outcome: str = "completed"  # completed | expired | failed
    finish: int | None = None
    shuffle: bool = True
    garbage: int = 0
    hold: bool = False
    fail_message: str = "scripted batch failure"


class _State:
    def __init__(self, responder: Responder, plans: list[BatchPlan], default: BatchPlan):
        self.responder = responder
        self.plans = plans
        self.default = default
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self.plan_of: dict[str, BatchPlan] = {}
        self.answered: list[str] = []  # custom_ids the responder answered, in order
        self.auth: list[str] = []  # Authorization headers seen
        self.lock = threading.RLock()
        self.counter = 0
        self.released = threading.Event()

    def new_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:06d}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self) -> list[str]:
        st: _State = self.server.state
        with st.lock:
            st.auth.append(self.headers.get("Authorization", ""))
        path = urlparse(self.path).path.rstrip("/")
        parts = path.split("/")
        return parts[parts.index("v1") + 1 :] if "v1" in parts else parts[1:]

    def do_POST(self) -> None:  # noqa: N802
        parts = self._route()
        st: _State = self.server.state
        body = self._body()
        if parts == ["files"]:
            self._upload(body)
        elif parts == ["batches"]:
            self._create(json.loads(body or b"{}"))
        elif len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
            with st.lock:
                batch = st.batches.get(parts[1])
                if batch is None:
                    return self._error(404, f"no batch {parts[1]}")
                if batch["status"] in ("validating", "in_progress"):
                    self._finish(batch, "cancelled")
                self._send(200, batch)
        else:
            self._error(404, f"no route {self.path}")

    def do_GET(self) -> None:  # noqa: N802
        parts = self._route()
        st: _State = self.server.state
        with st.lock:
            if parts == ["files"]:
                purpose = parse_qs(urlparse(self.path).query).get("purpose", [None])[0]
                items = [{k: v for k, v in f.items() if k != "data"} for f in st.files.values()
                         if purpose in (None, f["purpose"])]
                return self._send(200, {"object": "list", "data": items, "has_more": False})
            if len(parts) == 2 and parts[0] == "files" and parts[1] in st.files:
                meta = {k: v for k, v in st.files[parts[1]].items() if k != "data"}
                return self._send(200, meta)
            if len(parts) == 3 and parts[0] == "files" and parts[2] == "content" and parts[1] in st.files:
                return self._send(200, st.files[parts[1]]["data"], "application/octet-stream")
            if parts == ["batches"]:
                query = parse_qs(urlparse(self.path).query)
                items = sorted(st.batches.values(), key=lambda b: b["id"], reverse=True)
                if "after" in query:
                    items = [b for b in items if b["id"] < query["after"][0]]
                limit = int(query.get("limit", ["20"])[0])
                page = items[:limit]
                return self._send(200, {"object": "list", "data": page, "has_more": len(items) > limit,
                                        "first_id": page[0]["id"] if page else None,
                                        "last_id": page[-1]["id"] if page else None})
            if len(parts) == 2 and parts[0] == "batches" and parts[1] in st.batches:
                return self._send(200, self._advance(st.batches[parts[1]]))
        self._error(404, f"no route {self.path}")

    # -- files --------------------------------------------------------------------------------------------------

    def _upload(self, body: bytes) -> None:
        st: _State = self.server.state
        head = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode()
        msg = email.message_from_bytes(head + body, policy=email.policy.HTTP)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
            return self._error(400, "expected a file with purpose 'batch'")
        filename, data = fields["file"]
        with st.lock:
            file_id = st.new_id("file")
            st.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                                 "filename": filename or "upload.jsonl", "purpose": "batch", "status": "processed",
                                 "data": data}
            meta = {k: v for k, v in st.files[file_id].items() if k != "data"}
        self._send(200, meta)

    # -- batches ------------------------------------------------------------------------------------------------

    def _create(self, req: dict[str, Any]) -> None:
        st: _State = self.server.state
        if req.get("completion_window") != "24h":
            return self._error(400, "completion_window must be 24h")
        with st.lock:
            if req.get("input_file_id") not in st.files:
                return self._error(400, f"no file {req.get('input_file_id')}")
            batch_id = st.new_id("batch")
            plan = st.plans.pop(0) if st.plans else st.default
            st.plan_of[batch_id] = plan
            st.polls[batch_id] = 0
            batch = {
                "id": batch_id, "object": "batch", "endpoint": req.get("endpoint"), "errors": None,
                "input_file_id": req["input_file_id"], "completion_window": "24h", "status": "validating",
                "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                "metadata": req.get("metadata"), "request_counts": {"total": 0, "completed": 0, "failed": 0},
            }
            st.batches[batch_id] = batch
        self._send(200, batch)

    def _advance(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One retrieve: validating → in_progress → (after the plan's polls) its outcome."""
        st: _State = self.server.state
        plan = st.plan_of[batch["id"]]
        if batch["status"] == "validating":
            lines, problem = self._validate(batch)
            if problem:
                batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": problem}]}
                self._set(batch, "failed")
            else:
                batch["request_counts"]["total"] = len(lines)
                self._set(batch, "in_progress")
        elif batch["status"] == "in_progress":
            st.polls[batch["id"]] += 1
            if st.polls[batch["id"]] >= plan.polls and (not plan.hold or st.released.is_set()):
                self._finish(batch, plan.outcome)
        return batch

    def _set(self, batch: dict[str, Any], status: str) -> None:
        batch["status"] = status
        batch[f"{status}_at"] = int(time.time())

    def _validate(self, batch: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        st: _State = self.server.state
        lines, seen, models = [], set(), set()
        for n, raw in enumerate(st.files[batch["input_file_id"]]["data"].splitlines(), 1):
            try:
                line = json.loads(raw)
                cid, body = line["custom_id"], line["body"]
                if line.get("method") != "POST" or line.get("url") != batch["endpoint"]:
                    return [], f"line {n}: method must be POST and url {batch['endpoint']}"
            except (ValueError, KeyError, TypeError):
                return [], f"line {n}: not a batch request line"
            if cid in seen:
                return [], f"line {n}: duplicate custom_id {cid}"
            seen.add(cid)
            models.add(body.get("model"))
            lines.append(line)
        if len(models) > 1:
            return [], "a batch file must use one model"
        return lines, None

    def _finish(self, batch: dict[str, Any], outcome: str) -> None:
        """Answer the requests (all, or the plan's ``finish`` first ones) and write the output and error files."""
        st: _State = self.server.state
        plan = st.plan_of[batch["id"]]
        if outcome == "failed":
            batch["errors"] = {"object": "list", "data": [{"code": "failed", "message": plan.fail_message}]}
            return self._set(batch, "failed")
        lines, _ = self._validate(batch)
        if outcome in ("expired", "cancelled") and plan.finish is not None:
            lines = lines[: plan.finish]
        elif outcome in ("expired", "cancelled"):
            lines = lines[: len(lines) // 2]
        out, err = [], []
        for line in lines:
            reply: Reply = st.responder(line["body"])
            st.answered.append(line["custom_id"])
            rid = st.new_id("req")
            if reply.status == 200:
                body = completion(line["body"], reply.text or "", st.new_id("chatcmpl"))
                out.append({"id": st.new_id("batch_req"), "custom_id": line["custom_id"], "error": None,
                            "response": {"status_code": 200, "request_id": rid, "body": body}})
            else:
                err.append({"id": st.new_id("batch_req"), "custom_id": line["custom_id"], "error": None,
                            "response": {"status_code": reply.status, "request_id": rid,
                                         "body": {"error": {"message": f"scripted HTTP {reply.status}",
                                                            "type": "server_error"}}}})
        rng = random.Random(batch["id"])
        if plan.shuffle:
            rng.shuffle(out)
        text = [json.dumps(o) for o in out]
        for i in range(plan.garbage):
            text.insert(rng.randrange(len(text) + 1), ["{not json", '{"no_custom_id": 1}', "[1, 2]"][i % 3])
        for kind, items in (("output", text), ("error", [json.dumps(e) for e in err])):
            if items:
                file_id = st.new_id("file")
                data = ("\n".join(items) + "\n").encode()
                st.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data), "purpose": "batch_output",
                                     "created_at": int(time.time()), "filename": f"{batch['id']}_{kind}.jsonl",
                                     "status": "processed", "data": data}
                batch[f"{kind}_file_id"] = file_id
        batch["request_counts"]["completed"] = len(out)
        batch["request_counts"]["failed"] = len(err)
        self._set(batch, outcome)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: _State


class BatchServer(BackgroundServer):
    """Serve the Batch API at ``http://127.0.0.1:PORT/v1`` in a background thread; ``plans`` are used by batches in
    the order they are created, then ``default``."""

    def __init__(self, responder: Responder, *, plans: list[BatchPlan] | None = None,
                 default: BatchPlan | None = None, port: int = 0):
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.state = _State(responder, list(plans or []), default or BatchPlan())
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def state(self) -> _State:
        return self._server.state

    @property
    def batches(self) -> dict[str, dict[str, Any]]:
        return self._server.state.batches

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self._server.state.files

    def release(self) -> None:
        """Let batches held in progress (``BatchPlan.hold``) finish at their next retrieve."""
        self._server.state.released.set()
