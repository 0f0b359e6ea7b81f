"""Starts a real `aetherium serve` on the Docker backend for the SDK's tests, as test/e2e does (serveEnv): embedded
queue and SQLite in a temporary data directory, networking off, a free port; and stops it afterwards.

The binaries come from AETHERIUM_BIN_DIR (default ../../bin from sdk/python, where `make build` puts them). Without
a Docker engine the tests skip loudly, unless AETHERIUM_REQUIRE_SERVICES=1, which makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_DIR = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SDK_DIR, "src"))


def bin_dir() -> str:
    return os.path.abspath(os.environ.get("AETHERIUM_BIN_DIR") or os.path.join(SDK_DIR, "..", "..", "bin"))


def require_docker() -> None:
    try:
        out = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                             text=True, timeout=30)
        ok, why = out.returncode == 0, (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, why = False, str(e)
    if ok:
        return
    if os.environ.get("AETHERIUM_REQUIRE_SERVICES") == "1":
        raise RuntimeError("Docker engine is required (AETHERIUM_REQUIRE_SERVICES=1) but unavailable: " + why)
    raise unittest.SkipTest("SKIPPED: Docker engine unavailable (%s); run scripts/setup.sh services" % why)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `aetherium serve` process."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.data_dir = ""
        self.url = ""
        self.api_key = ""
        self.worker_id = "sdkpy-%d-%d" % (os.getpid(), int(time.time() * 1000) % 1000000)

    def start(self) -> "Server":
        require_docker()
        bd = bin_dir()
        for b in ("aetherium", "aetherium-agent"):
            if not os.access(os.path.join(bd, b), os.X_OK):
                raise RuntimeError("%s/%s is missing: run `make build` (or set AETHERIUM_BIN_DIR)" % (bd, b))
        self.data_dir = tempfile.mkdtemp(prefix="aeth-py-")
        port = free_port()
        self.url = "http://127.0.0.1:%d" % port
        env = dict(os.environ)
        env.update({
            "AETHERIUM_DATA_DIR": self.data_dir,
            "AETHERIUM_LISTEN": "127.0.0.1:%d" % port,
            "AETHERIUM_AGENT_BINARY": os.path.join(bd, "aetherium-agent"),
            "AETHERIUM_LOG_LEVEL": "info",
            "AETHERIUM_BACKEND": "docker",
            # Host networking would change this machine's interfaces and firewall (see test/e2e serveEnv).
            "AETHERIUM_NETWORK": "off",
            "AETHERIUM_METRICS_LISTEN": "off",
            "AETHERIUM_WORKER_ID": self.worker_id,
        })
        self._log = open(os.path.join(self.data_dir, "serve.log"), "wb")
        self.proc = subprocess.Popen([os.path.join(bd, "aetherium"), "serve"], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_up()
        except BaseException:
            self.stop(show_log=True)
            raise
        return self

    def _get(self, path: str) -> dict:  # type: ignore[type-arg]
        req = urllib.request.Request(self.url + "/api/v1" + path)
        if self.api_key:
            req.add_header("Authorization", "Bearer " + self.api_key)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def _wait_up(self) -> None:
        deadline = time.monotonic() + 60
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("aetherium serve exited early (%s):\n%s" % (self.proc.returncode, self.log()))
            try:
                if not self.api_key:
                    self._get("/health")
                    with open(os.path.join(self.data_dir, "admin-api-key")) as f:
                        self.api_key = f.readline().strip()
                st = self._get("/status")
                if st.get("workers", {}).get("live", 0) > 0:
                    return
                last = str(st)
            except (OSError, ValueError) as e:
                last = str(e)
            time.sleep(0.05)
        raise RuntimeError("aetherium serve was not ready within 60 s (%s):\n%s" % (last, self.log()))

    def log(self) -> str:
        try:
            with open(os.path.join(self.data_dir, "serve.log"), "rb") as f:
                return f.read()[-20000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, show_log: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if show_log:
            sys.stderr.write("--- output of aetherium serve ---\n" + self.log())
        # Containers of VMs the tests left (none when they pass) go with the server.
        out = subprocess.run(["docker", "ps", "-aq", "--filter", "label=aetherium.worker-id=" + self.worker_id],
                             capture_output=True, text=True)
        ids = out.stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f"] + ids, capture_output=True)
        if getattr(self, "_log", None):
            self._log.close()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def leftover_containers(self) -> list:  # type: ignore[type-arg]
        out = subprocess.run(["docker", "ps", "-aq", "--filter", "label=aetherium.worker-id=" + self.worker_id],
                             capture_output=True, text=True)
        return out.stdout.split()


# --- the contract: what the SDK sends and decodes must be in the server's OpenAPI document ---

_routes: set = set()  # type: ignore[type-arg]


def record_routes() -> None:
    """Wraps the clients' request openers so every (method, target) the tests send is kept."""
    import aetherium.async_client as ac
    import aetherium.client as sc

    if getattr(sc.Client._open, "_recording", False):
        return

    def wrap(fn, method_arg: bool):  # type: ignore[no-untyped-def]
        def inner(*a, **kw):  # type: ignore[no-untyped-def]
            if method_arg:
                _routes.add((a[1], a[2]))
            else:
                _routes.add(("GET", a[2]))
            return fn(*a, **kw)
        inner._recording = True  # type: ignore[attr-defined]
        return inner

    sc.Client._open = wrap(sc.Client._open, True)  # type: ignore[method-assign]
    ac.AsyncClient._open = wrap(ac.AsyncClient._open, True)  # type: ignore[method-assign]
    sc.Shell._open = classmethod(wrap(sc.Shell._open.__func__, False))  # type: ignore[method-assign]
    ac.AsyncShell._open = classmethod(wrap(ac.AsyncShell._open.__func__, False))  # type: ignore[method-assign]


def openapi(server: Server) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(server.url + "/api/v1/openapi.json", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def unmatched_routes(spec: dict) -> list:  # type: ignore[type-arg]
    """The recorded requests that no path and method of the OpenAPI document describes."""
    import re
    from urllib.parse import urlsplit

    pats = []
    for path, ops in spec["paths"].items():
        rx = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
        pats.append((rx, {m.upper() for m in ops}))
    bad = []
    for method, target in sorted(_routes):
        p = urlsplit(target).path
        assert p.startswith("/api/v1/"), target
        p = p[len("/api/v1"):]
        if not any(rx.match(p) and method in methods for rx, methods in pats):
            bad.append("%s %s" % (method, p))
    return bad


def recorded_routes() -> int:
    return len(_routes)
