"""``scripts/lab.sh``: JupyterLab serves the executed notebooks and runs the project's kernel.

One server for the module, started the way the README says (``scripts/lab.sh``,
here with ``--no-browser`` on a free loopback port and throw-away Jupyter
folders), always stopped at the end. The tests read an executed notebook through
the contents API, start a kernel of the ``privimage`` spec over the same
websocket a browser uses, and, where Debian's chromium is installed, load the
tour in a headless browser and look for its rendered output.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOUR = "results/quick/notebooks/00_tour.ipynb"
# Seconds: the server's start, one HTTP request, a kernel's first answer, the browser.
START_TIMEOUT, REQUEST_TIMEOUT, KERNEL_TIMEOUT, BROWSER_TIMEOUT = 90, 30, 120, 180
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _venv_is_current() -> bool:
    """Whether scripts/bootstrap.sh would leave .venv as it is (so the test never installs anything)."""
    stamp = REPO_ROOT / ".venv" / ".privimage-install-stamp"
    want = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return (REPO_ROOT / ".venv" / "bin" / "python").exists() and stamp.is_file() and stamp.read_text().strip() == want


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Lab:
    """A running ``scripts/lab.sh``: its port, token and HTTP helpers."""

    def __init__(self, process: subprocess.Popen, port: int, token: str, log: Path) -> None:
        self.process, self.port, self.token, self.log = process, port, token, log

    def url(self, path: str) -> str:
        separator = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{separator}token={self.token}"

    def request(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path), data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            text = response.read().decode()
        return json.loads(text) if text else {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``scripts/lab.sh --no-browser`` on a free loopback port; stopped (process group) whatever happens."""
    if not _venv_is_current():
        pytest.skip("no current .venv: scripts/lab.sh would install one; ./run_tests.sh creates it first")
    home = tmp_path_factory.mktemp("jupyter")
    port = _free_port()
    # Throw-away Jupyter folders: no user settings read, no workspace or cookie written outside the test.
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    log = home / "lab.log"
    with log.open("w") as sink:
        process = subprocess.Popen([str(REPO_ROOT / "scripts" / "lab.sh"), "--port", str(port), "--no-browser"],
                                   cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        token = _wait_for_token(process, log)
        server = Lab(process, port, token, log)
        _wait_until_serving(server)
        yield server
    finally:
        _stop(process)


def _wait_for_token(process: subprocess.Popen, log: Path) -> str:
    """The token from the URL lab.sh prints first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "executed tour:" in line and "token=" in line:
                return line.rsplit("token=", 1)[1].strip()
        if process.poll() is not None:
            pytest.fail(f"scripts/lab.sh exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"scripts/lab.sh printed no URL within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def _wait_until_serving(server: Lab) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            server.request("api/status")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within {START_TIMEOUT} s:\n{server.log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it shuts its kernels down), then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --------------------------------------------------------------------------- the server


def test_lab_listens_on_loopback_only(lab):
    # Binding to 127.0.0.1 (not 0.0.0.0): the notebook server runs code for whoever reaches it.
    assert f"http://127.0.0.1:{lab.port}/lab" in lab.log.read_text()
    assert "0.0.0.0" not in lab.log.read_text()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{lab.port}/api/contents", timeout=REQUEST_TIMEOUT)
    assert refused.value.code == 403  # no token, no access


def test_the_executed_tour_is_served_with_its_outputs(lab):
    before = (REPO_ROOT / TOUR).read_bytes()
    served = lab.request(f"api/contents/{TOUR}?content=1")
    on_disk = nbformat.reads(before.decode(), as_version=4)
    assert served["type"] == "notebook"
    cells = served["content"]["cells"]
    assert [c["cell_type"] for c in cells] == [c.cell_type for c in on_disk.cells]
    outputs = [output for cell in cells if cell["cell_type"] == "code" for output in cell["outputs"]]
    # Executed: text and figures are there to read without running anything.
    assert any(o["output_type"] == "stream" for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert served["content"]["metadata"]["kernelspec"]["name"] == "privimage"
    # Reading it changes nothing on disk.
    assert (REPO_ROOT / TOUR).read_bytes() == before


def test_the_privimage_kernel_is_the_default_and_imports_the_project(lab):
    specs = lab.request("api/kernelspecs")
    assert specs["default"] == "privimage" and "privimage" in specs["kernelspecs"]
    kernel = lab.request("api/kernels", method="POST", body={"name": "privimage"})
    try:
        printed = asyncio.run(asyncio.wait_for(
            _execute(lab, kernel["id"], "import sys, privimage\nprint(privimage.__file__)\nprint(sys.prefix)"),
            KERNEL_TIMEOUT))
    finally:
        lab.request(f"api/kernels/{kernel['id']}", method="DELETE")
    module_file, prefix = printed.strip().splitlines()[-2:]
    assert Path(module_file).resolve().is_relative_to(REPO_ROOT)
    # The kernel runs in the project's .venv, where bootstrap.sh registered it.
    assert Path(prefix).resolve() == (REPO_ROOT / ".venv").resolve()


async def _execute(lab: Lab, kernel_id: str, code: str) -> str:
    """Run ``code`` in a kernel over the server's websocket (as JupyterLab does); its printed text."""
    from tornado.websocket import websocket_connect

    socket_url = lab.url(f"api/kernels/{kernel_id}/channels").replace("http://", "ws://")
    connection = await websocket_connect(socket_url)
    session = uuid.uuid4().hex

    async def send(msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        await connection.write_message(json.dumps({
            "header": {"msg_id": msg_id, "session": session, "username": "test", "msg_type": msg_type,
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [], "content": content,
        }))
        return msg_id

    # IOPub is publish/subscribe: what a kernel prints before the server's subscription is up is lost
    # (ZeroMQ's slow joiner). Nudge with kernel_info requests, as jupyter_client does, until one's IOPub
    # status arrives; only then is the output of the code below sure to reach us.
    nudges = {await send("kernel_info_request", {})}
    while True:
        try:
            message = await asyncio.wait_for(connection.read_message(), 1.0)
        except asyncio.TimeoutError:
            nudges.add(await send("kernel_info_request", {}))
            continue
        assert message is not None, "the kernel's websocket closed before it answered"
        message = json.loads(message)
        if message.get("channel") == "iopub" and message.get("parent_header", {}).get("msg_id") in nudges:
            break
    msg_id = await send("execute_request", {"code": code, "silent": False, "store_history": False,
                                            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    # Done when both the reply (shell channel) and the idle status (IOPub) have come: the two channels
    # are not ordered with respect to each other, so either may arrive first.
    printed, reply, idle = [], None, False
    while reply is None or not idle:
        message = await connection.read_message()
        assert message is not None, "the kernel's websocket closed before it answered"
        message = json.loads(message)
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["msg_type"]
        if kind == "stream":
            printed.append(message["content"]["text"])
        elif kind == "error":
            pytest.fail(f"the kernel raised {message['content']['ename']}: {message['content']['evalue']}")
        elif kind == "execute_reply":
            reply = message["content"]["status"]
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            idle = True
    connection.close()
    assert reply == "ok"
    return "".join(printed)


# --------------------------------------------------------------------------- a real browser


def test_a_headless_browser_renders_the_tour_with_its_outputs(lab):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the browser check needs it")
    tour = nbformat.read(REPO_ROOT / TOUR, as_version=4)
    # The first line the tour itself prints (stdout); library warnings on stderr vary with the install.
    first_text = next(output.text for cell in tour.cells if cell.cell_type == "code" for output in cell.outputs
                      if output.output_type == "stream" and output.name == "stdout" and output.text.strip()
                      ).strip().splitlines()[0]
    with tempfile.TemporaryDirectory(prefix="lab-chromium-") as profile:
        # Virtual time runs JupyterLab's scripts to rest without waiting for it in real time.
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000",
             "--dump-dom", lab.url(f"lab/tree/{TOUR}")],
            capture_output=True, text=True, timeout=BROWSER_TIMEOUT, start_new_session=True,
        )
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    # The notebook's first printed line and its figures, rendered by JupyterLab's output area. The line is
    # looked for in the page's text, not its markup: JupyterLab wraps URLs and paths in output in links.
    page_text = html.unescape(re.sub(r"<[^>]+>", "", dom))
    assert first_text in page_text, "the tour's first output is not on the page"
    rendered_images = re.findall(r'<div class="[^"]*\bjp-RenderedImage\b[^"]*"[^>]*><img src="data:image/png;base64,', dom)
    assert rendered_images, "no figure of the tour is rendered on the page"
