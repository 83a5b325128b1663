"""A real OTLP/HTTP trace receiver for tests: it listens on 127.0.0.1, decodes every ExportTraceServiceRequest
with opentelemetry-proto (protobuf, gzip or not) and keeps the spans and the raw request bodies.

    with OTLPReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint   # the exporter appends /v1/traces
        ...
        spans = receiver.spans()
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str, dict[str, Any]]]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    scope: str
    resource: dict[str, Any]
    start_ns: int
    end_ns: int
    children: list[Span] = field(default_factory=list, repr=False)

    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]


class OTLPReceiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self.bodies: list[bytes] = []  # every request as it arrived (decompressed), to search for what must not be
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(body, request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _add(self, body: bytes, request: ExportTraceServiceRequest) -> None:
        spans = []
        for rs in request.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(Span(
                        name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(), kind=s.kind, attributes=_attrs(s.attributes),
                        events=[(e.name, _attrs(e.attributes)) for e in s.events],
                        links=[(ln.trace_id.hex(), ln.span_id.hex(), _attrs(ln.attributes)) for ln in s.links],
                        status_code=s.status.code, status_message=s.status.message, scope=ss.scope.name,
                        resource=resource, start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano))
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            self._spans.extend(spans)

    def spans(self) -> list[Span]:
        """Every span received so far, each with its received children."""
        with self._lock:
            spans = list(self._spans)
        by_id = {s.span_id: s for s in spans}
        for s in spans:
            s.children = []
        for s in spans:
            if s.parent_id in by_id:
                by_id[s.parent_id].children.append(s)
        for s in spans:
            s.children.sort(key=lambda c: c.start_ns)
        return spans

    def wait_for(self, ready: Callable[[list[Span]], bool], timeout_s: float = 30.0) -> list[Span]:
        """The spans once `ready` holds for them (an exporter sends in batches, from its own thread)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if ready(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self.bodies.clear()
            self.requests = 0

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
