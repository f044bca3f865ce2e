"""Start `megatron-sip serve` as a child process and wait until it serves: the one launcher of the
demo, the tests, the benchmarks and the experiment scripts.

    with ServeProcess(["--model", "embedded"], log_path=Path("serve.log")) as url:
        ...  # judge.endpoints=[url]

The ready wait never blocks past its deadline (the server's stdout is read on a thread), checks
`/health` before it returns, and the process is stopped on exit: SIGTERM, then SIGKILL after
`stop_timeout_s`.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from megatron_sip.errors import UnavailableError

_READY = re.compile(r"ready at (\S+)")
_HEALTH_TIMEOUT_S = 10.0


class ServeProcess:
    def __init__(self, args: Sequence[str], *, log_path: Path, ready_timeout_s: float = 300.0,
                 env: Optional[Dict[str, str]] = None, preexec_fn: Optional[Callable[[], None]] = None,
                 stop_timeout_s: float = 60.0, cwd: Optional[Path] = None) -> None:
        self.command = [sys.executable, "-m", "megatron_sip", "serve", *args]
        if "--port" not in args:
            self.command += ["--port", "0"]
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.env = env
        self.preexec_fn = preexec_fn
        self.stop_timeout_s = stop_timeout_s
        self.cwd = cwd
        self.process: Optional[subprocess.Popen] = None
        self.url: Optional[str] = None
        self.ready_line: Optional[str] = None
        """The line the server printed when it became ready (it says, e.g., whether a key is required)."""
        self.stdout_lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._log = None
        self._reader: Optional[threading.Thread] = None

    def start(self) -> str:
        """Start the server; its URL once it serves. Raises UnavailableError (with the log's path)
        when it exits first or is not ready within `ready_timeout_s`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        env=self.env if self.env is not None else dict(os.environ),
                                        preexec_fn=self.preexec_fn, cwd=self.cwd)
        self._reader = threading.Thread(target=self._read_stdout, name="serve-stdout", daemon=True)
        self._reader.start()
        try:
            self.url = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> Optional[int]:
        """SIGTERM, then SIGKILL after `stop_timeout_s`; the exit code (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:  # what it printed before exiting is then in `printed()`
            self._reader.join(timeout=self.stop_timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def printed(self) -> str:
        """What the server printed on stdout so far (after the ready line; e.g. 'stopped')."""
        lines = []
        while True:
            try:
                line = self.stdout_lines.get_nowait()
            except queue.Empty:
                return "".join(lines)
            if line is not None:
                lines.append(line)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.stdout_lines.put(line)
        self.stdout_lines.put(None)

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UnavailableError(f"megatron-sip serve was not ready within {self.ready_timeout_s:.0f}s; "
                                       f"see {self.log_path}")
            try:
                line = self.stdout_lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                raise UnavailableError(f"megatron-sip serve exited (code {self.process.wait()}) before it was "
                                       f"ready; see {self.log_path}")
            match = _READY.search(line)
            if match and _healthy(match.group(1)):
                self.ready_line = line
                return match.group(1)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=_HEALTH_TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
