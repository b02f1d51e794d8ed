"""A counting HTTP proxy in front of a local object store (moto, fake-gcs-server, MinIO, ...), in its own
process: ``python dali_video/tools/bench/proxy.py UPSTREAM_PORT [UPSTREAM_HOST]`` prints the port it listens
on (127.0.0.1), then forwards every request to ``UPSTREAM_HOST:UPSTREAM_PORT`` (default host 127.0.0.1),
passing each answer on as it comes, and logs it, until its stdin closes. dali-video-bench counts requests,
bytes and requests in flight with it; the tests' fault proxy (``tests/fault_proxy.py``) adds faults on top.

Control (paths starting ``/__``, never forwarded):
  ``POST /__settings__`` JSON: update the settings (``delay``: seconds added to every request);
  ``GET /__log__``: ``{"log": [{"method", "path", "range", "status", "bytes"}, ...], "most_in_flight": n,
  "bytes": n}`` since the last ``DELETE /__log__``, which clears them: the requests that came since, and
  the bytes of the answers that ended since (a request in flight when the log is cleared or read has its
  answer's bytes counted in the window where it ends: readers that read ahead have requests in flight at
  both ends of a window).

Each client connection is served by its own thread, which keeps one connection to the store alive
(as the clients keep theirs to the proxy), so the proxy adds no connection set-up per request.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Hop-by-hop or recomputed: the proxy frames each answer itself.
_DROPPED = ("transfer-encoding", "connection", "content-length", "keep-alive")


class Proxy(BaseHTTPRequestHandler):
    """Forwards a request, counting it; ``answer`` is the hook a subclass (faults) overrides."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    upstream_port: int
    upstream_host = "127.0.0.1"
    # The proxy's state, shared by its threads: one proxy per process.
    lock = threading.Lock()
    settings: dict = {"delay": 0.0}
    log: list = []
    in_flight = most_in_flight = bytes_sent = 0

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _control(self):
        cls = type(self)
        with cls.lock:
            if self.command == "POST" and self.path == "/__settings__":
                new = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                unknown = set(new) - set(cls.settings)
                if unknown:
                    return self.reply(400, f"unknown settings {sorted(unknown)}".encode())
                cls.settings.update(new)
                return self.reply(200, b"{}")
            if self.path != "/__log__":
                return self.reply(404)
            if self.command == "DELETE":
                cls.log[:], cls.most_in_flight, cls.bytes_sent = [], cls.in_flight, 0
            body = json.dumps({"log": cls.log, "most_in_flight": cls.most_in_flight, "bytes": cls.bytes_sent}).encode()
        self.reply(200, body, [("Content-Type", "application/json")])

    def _forward(self):
        if self.path.startswith("/__"):
            return self._control()
        cls = type(self)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():  # not read: the connection is lost
            self.close_connection = True
            return self.reply(411, b"the bench's proxy forwards request bodies with a Content-Length only")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        entry = {"method": self.command, "path": self.path, "range": self.headers.get("Range"), "status": None,
                 "bytes": 0}
        with cls.lock:
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
            settings = dict(cls.settings)
            self.admit(entry)
            cls.log.append(entry)  # logged when it comes: a stalled request is in the log meanwhile
        try:
            time.sleep(settings["delay"])
            entry["status"], entry["bytes"] = self.answer(settings, body, entry)
        finally:
            with cls.lock:
                cls.in_flight -= 1
                cls.bytes_sent += entry["bytes"]

    def admit(self, entry: dict) -> None:
        """Called under the lock as a request comes, with its log line: a subclass's hook (faults)."""

    def answer(self, settings: dict, body: bytes, entry: dict) -> tuple:
        """Answer the request; returns (status, body bytes sent). ``entry`` is its log line."""
        return self.relay(body)

    def fetch(self, body: bytes) -> http.client.HTTPResponse:
        """The store's answer to this request, its body not read yet, over this thread's kept-alive
        connection (a connection the store closed meanwhile is opened again, once)."""
        for attempt in (0, 1):
            if getattr(self, "_upstream", None) is None:
                self._upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                return self._upstream.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise

    def relay(self, body: bytes, half: bool = False) -> tuple[int, int]:
        """Forward the request and pass the store's answer back as it comes, 1 MiB at a time, never held
        whole (``half``: only the first half of its body, then close the connection: a cut answer)."""
        try:
            answer = self.fetch(body)
        except (OSError, http.client.HTTPException) as e:  # nothing sent yet: say why, rather than hang up
            text = f"the bench's proxy got no answer from the store at {self.upstream_host}:{self.upstream_port}: {e}"
            self.reply(502, text.encode(), [("Content-Type", "text/plain")])
            return 502, len(text)
        length = answer.getheader("Content-Length")
        # A chunked answer (no length) is read whole: the proxy frames each answer with its length.
        whole = answer.read() if length is None or self.command == "HEAD" else None
        size = len(whole) if length is None else int(length)  # a HEAD answer has no body, but the length
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in _DROPPED:
                self.send_header(k, v)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return answer.status, 0
        wanted, sent = size // 2 if half else size, 0
        while sent < wanted:
            chunk = whole[sent:wanted] if whole is not None else answer.read(min(1 << 20, wanted - sent))
            if not chunk:
                break  # the store's answer ended short: so does this one
            self.wfile.write(chunk)
            sent += len(chunk)
        if not answer.isclosed():  # its body not read to the end: that connection cannot carry another request
            self._upstream.close()
            self._upstream = None
        if sent < size:
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)
        return answer.status, sent

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


def stop(proc) -> None:
    """Ends a server or proxy process (a ``subprocess.Popen``): terminated, killed after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# The proxy is on this host: its control calls go straight to it, never through http_proxy.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def set_settings(url: str, **values) -> None:
    """Update the settings of the proxy at ``url``: ``delay`` (seconds added to every request from now
    on), and the fault proxy's ``fault``, ``count``, ``match`` (tests/fault_proxy.py)."""
    request = urllib.request.Request(f"{url}/__settings__", data=json.dumps(values).encode(), method="POST")
    _direct.open(request, timeout=60).close()


def set_delay(url: str, seconds: float) -> None:
    """Make the proxy at ``url`` add ``seconds`` to every request from now on."""
    set_settings(url, delay=seconds)


def proxy_log(url: str, clear: bool = False) -> dict:
    """The log of the proxy at ``url`` (``clear``: cleared, the empty log returned)."""
    request = urllib.request.Request(f"{url}/__log__", method="DELETE" if clear else "GET")
    with _direct.open(request, timeout=60) as answer:
        return json.loads(answer.read())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many clients connect at once when a pipeline starts

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that left mid-answer is no error
            super().handle_error(request, client_address)


def serve(handler: type[Proxy], upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
    """Serve ``handler`` in front of ``upstream_host:upstream_port`` on a free port, which is printed first."""
    handler.upstream_port, handler.upstream_host = upstream_port, upstream_host
    server = _Server(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _exit_when_stdin_closes() -> None:
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    # The bench holds this process's stdin open: when the bench ends, however it ends, so does the proxy.
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    serve(Proxy, int(sys.argv[1]), *sys.argv[2:3])
