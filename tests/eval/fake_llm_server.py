"""A local OpenAI-compatible chat endpoint for tests (standard library only, 127.0.0.1)."""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# reply(prompt) -> reply text, or (HTTP status, body) to fail that request
Reply = Callable[[str], "str | tuple[int, str]"]


class FakeChatServer:
    def __init__(self, reply: Reply):
        self.reply = reply
        self.prompts: list[str] = []
        self.payloads: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = payload["messages"][-1]["content"]
                # a multi-part message (text + images): the prompt is its text part
                prompt = content if isinstance(content, str) else "".join(
                    part["text"] for part in content if part["type"] == "text")
                server.prompts.append(prompt)
                server.payloads.append(payload)
                if self.path != "/v1/chat/completions":
                    return self._send(404, json.dumps({"error": f"no route {self.path}"}))
                answer = server.reply(prompt)
                if isinstance(answer, tuple):
                    return self._send(*answer)
                body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
                self._send(200, json.dumps(body))

            def _send(self, status: int, body: str):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
