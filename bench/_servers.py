"""An OpenAI-compatible server (llama-cpp-python's or llama.cpp's ``llama-server``) run as a subprocess on a free
port of 127.0.0.1 for a benchmark: started with its arguments, ready when ``/v1/models`` answers, then stopped."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``args`` (without a port) started with ``port_flag PORT``; ``url`` is its ``/v1`` base."""

    def __init__(self, args: list[str], *, port_flag: str = "--port", timeout_s: float = 300.0):
        self.port = free_port()
        self.args = [*args, port_flag, str(self.port)]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"the server did not start: {' '.join(self.args)}") from None
                time.sleep(0.5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
