"""ASGI middleware of the HTTP service: request metrics, and the body limits that keep a bad
client from holding memory or a connection (size cap, read deadline)."""

from __future__ import annotations

import asyncio
import json
import time

from serving.metrics import Metrics


async def send_problem(send, status: int, message: str) -> None:
    """A JSON error response that closes the connection (the rest of the body is never read)."""
    body = json.dumps({"message": message, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Reads the whole request body before the app sees it: 413 when it is (or announces being)
    larger than `max_bytes`, 408 when it has not fully arrived `timeout_s` after the request."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"body: larger than the limit of {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await send_problem(send, 400, "content-length: not a byte count")
            if int(length) > self.max_bytes:
                return await send_problem(send, 413, too_big)
        deadline = time.monotonic() + self.timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return await send_problem(send, 408, f"body: not received within {self.timeout_s:g} s")
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await send_problem(send, 413, too_big)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class RequestMetrics:
    """Counts every response by endpoint and status, and times it (outermost, so the limits'
    own 408/413 answers are counted too)."""

    def __init__(self, app, metrics: Metrics, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500
        t0 = time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(endpoint, status, time.perf_counter() - t0)
