"""A small HTTP proxy in front of an object-store test server, run in its own process by the tests:
``python tests/fault_proxy.py UPSTREAM_PORT`` prints the port it listens on (127.0.0.1), then forwards
every request and logs it. ``POST /__faults__`` with JSON ``{"delay": seconds, "fault": KIND, "count":
N, "match": substring}`` sets the added latency per request and makes the next N GETs whose path
contains ``match`` fail as KIND: "503" (SlowDown), "500", "reset" (connection closed before an
answer), "truncate" (half the body, then the connection closed), "stall" (no answer for 6 s). ``GET /__log__`` returns the
log (method, path, range, status, fault) and the most requests seen in flight at once;
``DELETE /__log__`` clears both."""
import http.client
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = ("127.0.0.1", int(sys.argv[1]))
lock = threading.Lock()
state = {"delay": 0.0, "fault": None, "count": 0, "match": "", "log": [], "in_flight": 0, "most_in_flight": 0}


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect

    def log_message(self, *args):
        pass

    def _reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _control(self):
        if self.path == "/__faults__":
            with lock:
                state.update(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            return self._reply(200)
        with lock:
            if self.command == "DELETE":
                state["log"], state["most_in_flight"] = [], 0
            body = json.dumps({"log": state["log"], "most_in_flight": state["most_in_flight"]}).encode()
        self._reply(200, body, [("Content-Type", "application/json")])

    def _forward(self):
        if self.path.startswith("/__"):
            return self._control()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            state["in_flight"] += 1
            state["most_in_flight"] = max(state["most_in_flight"], state["in_flight"])
            fault = None
            if self.command == "GET" and state["count"] > 0 and state["match"] in self.path:
                fault, state["count"] = state["fault"], state["count"] - 1
            delay = state["delay"]
            entry = {"method": self.command, "path": self.path, "range": self.headers.get("Range"), "status": None,
                     "fault": fault}
            state["log"].append(entry)  # logged when it comes: a stalled request is in the log meanwhile
        status = 0
        try:
            time.sleep(delay)
            status = self._answer(fault, body)
        finally:
            with lock:
                state["in_flight"] -= 1
                entry["status"] = status if fault is None else fault

    def _answer(self, fault, body):
        if fault in ("503", "500"):
            code = "SlowDown" if fault == "503" else "InternalError"
            xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>fault</Message></Error>".encode()
            self._reply(int(fault), xml, [("Content-Type", "application/xml")])
            return int(fault)
        if fault == "stall":  # longer than the clients' request timeouts (the AWS SDK's: 3 s)
            time.sleep(6)
            self.close_connection = True
            return 0
        if fault == "reset":
            self.close_connection = True
            self.connection.shutdown(2)
            return 0
        upstream = http.client.HTTPConnection(*UPSTREAM, timeout=30)
        upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        length = answer.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))  # a HEAD answer has no body
        self.end_headers()
        if fault == "truncate":
            self.wfile.write(data[:len(data) // 2])
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)
        elif self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()
        return answer.status

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()
