"""A worker function for the crash test: task ("boom", n) kills its own process."""
import os
import signal


def work(task):
    name, n = task
    if name == "boom":
        os.kill(os.getpid(), signal.SIGSEGV)
    return n * 10
