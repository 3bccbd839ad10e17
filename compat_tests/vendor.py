"""A stand-in LLM vendor: an OpenAI-compatible HTTP server on 127.0.0.1 that records every request.

It speaks the real wire protocol (``GET /v1/models``, ``POST /v1/chat/completions`` plain and
streamed as server-sent events, ``POST /v1/embeddings``) so the Letta server under test talks to it
exactly as it would to a vendor, and it records path, ``Authorization`` header and requested model so a test can assert
which key and which model reached which vendor.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None
    model: str | None
    body: dict | None

    @property
    def bearer(self) -> str | None:
        if self.authorization and self.authorization.lower().startswith("bearer "):
            return self.authorization[7:]
        return None


@dataclass
class FakeVendor:
    name: str
    models: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini")
    reply: str = "Hello from the vendor."
    key_in_model_names: bool = False  # list "<model>-<api key>": each key's provider gets models of its own
    # The error paths: None answers as a vendor does; "401" and "500" answer every request with that
    # status and an OpenAI-style error body; "slow" answers only after ``slow_seconds`` (longer than
    # the 5 s a server's model listing waits). A vendor that is not there at all: ``stop()``.
    failure: str | None = None
    slow_seconds: float = 7.0
    requests: list[RecordedRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "vendor not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def chat_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self, port: int = 0) -> "FakeVendor":
        """Listen on 127.0.0.1:``port`` (0: any free port; a port taken raises OSError)."""
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _record(self, body: dict | None) -> None:
                with vendor._lock:
                    vendor.requests.append(
                        RecordedRequest(
                            self.command,
                            self.path,
                            self.headers.get("Authorization"),
                            (body or {}).get("model"),
                            body,
                        )
                    )

            def _send_json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _failed(self) -> bool:
                """Answer as the vendor's ``failure`` says; True if that was the answer."""
                if vendor.failure == "slow":
                    time.sleep(vendor.slow_seconds)
                    return False
                if vendor.failure in ("401", "500"):
                    kind = "invalid_api_key" if vendor.failure == "401" else "server_error"
                    self._send_json(int(vendor.failure), {"error": {"message": f"ketta test vendor: {kind}",
                                                                    "type": kind, "code": kind}})
                    return True
                return False

            def do_GET(self) -> None:
                self._record(None)
                if self._failed():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    auth = self.headers.get("Authorization") or ""
                    key = auth[7:] if vendor.key_in_model_names and auth.lower().startswith("bearer ") else None
                    names = [f"{m}-{key}" if key else m for m in vendor.models]
                    self._send_json(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {"id": m, "object": "model", "created": 0, "owned_by": vendor.name, "context_length": 128000}
                                for m in names
                            ],
                        },
                    )
                else:
                    self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                self._record(body)
                if self._failed():
                    return
                if self.path.rstrip("/").endswith("/embeddings"):
                    self._embeddings(body)
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                    return
                model = body.get("model", "unknown")
                created = int(time.time())
                if body.get("stream"):
                    self._stream(model, created)
                    return
                self._send_json(
                    200,
                    {
                        "id": "chatcmpl-ketta",
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": vendor.reply}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    },
                )

            def _embeddings(self, body: dict) -> None:
                # One vector per input, of the requested dimension (1536 by default), as floats or
                # as the base64 of little-endian float32 (what openai's client asks for by default).
                inputs = body.get("input")
                inputs = [inputs] if isinstance(inputs, str) or not isinstance(inputs, list) else inputs
                dim = int(body.get("dimensions") or 1536)
                vector = [0.0] * (dim - 1) + [1.0]
                if body.get("encoding_format") == "base64":
                    encoded = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
                    data = [{"object": "embedding", "index": i, "embedding": encoded} for i in range(len(inputs))]
                else:
                    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(len(inputs))]
                self._send_json(200, {"object": "list", "data": data, "model": body.get("model", "unknown"),
                                      "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})

            def _stream(self, model: str, created: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {"id": "chatcmpl-ketta", "object": "chat.completion.chunk", "created": created, "model": model}
                chunks = [
                    {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": vendor.reply}, "finish_reason": None}]},
                    {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}},
                ]
                for chunk in chunks:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name=f"vendor-{self.name}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
