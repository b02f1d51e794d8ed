"""The bench's counting proxy (``dali_video/tools/bench/proxy.py``) with faults, in front of an
object-store test server, run in its own process by the tests: ``python -m tests.fault_proxy UPSTREAM_PORT``
prints the port it listens on (127.0.0.1), then forwards and logs every request as that proxy does.
``POST /__settings__`` with JSON ``{"delay": seconds, "fault": KIND, "count": N, "match": regex, "every": K,
"after": M}`` sets the added latency per request and makes N of the next GETs whose path ``match`` is found
in (each K-th of them, default every one; once M of them passed, default 0) fail as KIND: "503" (SlowDown), "500", "reset" (connection closed before an
answer), "truncate" (half the body, then the connection closed), "stall" (no answer for 6 s), "hang"
(the connection held open, no answer, until the fault is set to another kind: a store that stopped
answering). Each log line also says which fault it got (``"fault"``); ``GET /__log__`` and
``DELETE /__log__`` as in the bench's proxy."""
import re
import sys
import time

from dali_video.tools.bench.proxy import Proxy, serve


class FaultProxy(Proxy):
    settings = {"delay": 0.0, "fault": None, "count": 0, "match": "", "every": 1, "after": 0}
    matched = 0  # matching GETs since the settings last changed

    def admit(self, entry):
        fault, cls, after = None, type(self), self.settings["after"]
        if self.command == "GET" and self.settings["count"] > 0 and re.search(self.settings["match"], self.path):
            cls.matched += 1
            if cls.matched > after and (cls.matched - after) % self.settings["every"] == 0:
                fault = self.settings["fault"]
                self.settings["count"] -= 1
        entry["fault"] = fault

    def _control(self):
        if self.path == "/__settings__":
            type(self).matched = 0
        return super()._control()

    def answer(self, settings, body, entry):
        fault = entry["fault"]
        if fault in ("503", "500"):
            code = "SlowDown" if fault == "503" else "InternalError"
            xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>fault</Message></Error>".encode()
            self.reply(int(fault), xml, [("Content-Type", "application/xml")])
            return int(fault), len(xml)
        if fault == "stall":  # longer than the clients' request timeouts (the AWS SDK's: 3 s)
            time.sleep(6)
            self.close_connection = True
            return 0, 0
        if fault == "hang":
            deadline = time.monotonic() + 600
            while self.settings["fault"] == "hang" and time.monotonic() < deadline:
                time.sleep(0.05)
            self.close_connection = True
            return 0, 0
        if fault == "reset":
            self.close_connection = True
            self.connection.shutdown(2)
            return 0, 0
        return self.relay(body, half=fault == "truncate")


if __name__ == "__main__":
    serve(FaultProxy, int(sys.argv[1]))
