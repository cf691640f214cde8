"""A minimal client for an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, hosted APIs).

Standard library only. Responses are cached on disk by a hash of the request, so re-running an
evaluation costs no calls. Transient failures (connection errors, timeouts, HTTP 429 and 5xx)
are retried with exponential back-off; other HTTP errors fail at once with the server's message.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    """The endpoint could not produce an answer."""


@dataclass(frozen=True)
class EndpointConfig:
    url: str  # base URL (".../v1") or the full ".../chat/completions" URL
    model: str
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key, if any
    temperature: float = 0.0
    max_tokens: int = 512
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    cache_path: str | None = None  # JSONL file of {key, response}; None disables the cache

    @property
    def completions_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


class ChatEndpoint:
    """`complete(prompt) -> str` against one model, cached and retried."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self.calls = 0  # requests actually sent (cache hits excluded)
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        if config.cache_path and Path(config.cache_path).is_file():
            self._cache = _read_cache(Path(config.cache_path))

    def complete(self, prompt: str, system: str | None = None, sampling: Mapping[str, object] | None = None,
                 images: Sequence[str | Path] = ()) -> str:
        """The reply to one user message.

        `sampling` overrides request fields (temperature, top_p, max_tokens, or a server extension
        such as vLLM's repetition_penalty); a None value leaves that field out of the request.
        `images` are JPEG files sent after the text as base64 `image_url` parts.
        """
        content: str | list[dict] = prompt
        if images:
            content = [{"type": "text", "text": prompt}] + [
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{_base64_file(image)}"}}
                for image in images]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        fields = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens, **(sampling or {})}
        payload = {"model": self.config.model, "messages": messages,
                   **{name: value for name, value in fields.items() if value is not None}}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        answer = self._post_with_retries(payload)
        with self._lock:
            self._cache[key] = answer
            if self.config.cache_path:
                path = Path(self.config.cache_path)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"key": key, "response": answer}, ensure_ascii=False) + "\n")
        return answer

    def _post_with_retries(self, payload: dict) -> str:
        url = self.config.completions_url
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        body = json.dumps(payload).encode()
        last_error = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            self.calls += 1
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                    return _answer_text(json.loads(response.read().decode("utf-8")), url)
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace")[:500]
                if error.code not in _RETRYABLE_STATUS:
                    raise EndpointError(f"{url}: HTTP {error.code}: {detail}") from error
                last_error = f"HTTP {error.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last_error = str(error)
        raise EndpointError(f"{url}: no answer after {self.config.max_retries + 1} attempts ({last_error})")


def _answer_text(reply: dict, url: str) -> str:
    try:
        return reply["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as error:
        raise EndpointError(f"{url}: reply has no choices[0].message.content: {str(reply)[:300]}") from error


def _base64_file(path: str | Path) -> str:
    try:
        return base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError as error:
        raise EndpointError(f"image {path}: {error.strerror}") from error


def _read_cache(path: Path) -> dict[str, str]:
    cache = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                cache[record["key"]] = record["response"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by an interrupted run: that request is simply re-sent
    return cache
