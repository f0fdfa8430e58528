"""A real headless Chromium, driven over the DevTools protocol, for tests that check what a page renders.

`--dump-dom` shows a page as it loads; a tree of runs needs clicks (MLflow's shared views never carry which rows are
expanded). This drives Chromium's DevTools websocket with aiohttp (installed with ray[default]): evaluate
JavaScript in the page, wait for a condition, take a screenshot. Chromium listens on 127.0.0.1 only, in its own
process group, with a throw-away profile, and is stopped by its PID when the session ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.tracking_server import free_port

T = TypeVar("T")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One page target: `send` a DevTools command, `js` an expression (awaited, returned by value)."""

    def __init__(self, ws: Any) -> None:
        self.ws, self._id = ws, 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        want = self._id
        await self.ws.send_str(json.dumps({"id": want, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str) -> Any:
        out = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"JavaScript failed: {str(out['exceptionDetails'])[:500]}")
        return out["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if await self.js(expression):
                return True
            await asyncio.sleep(0.5)
        return False

    async def screenshot(self, path: str | Path) -> Path:
        out = await self.send("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(out["data"]))
        return Path(path)


def _targets(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as resp:  # noqa: S310 - local
        return [t for t in json.loads(resp.read()) if t.get("type") == "page"]


async def _drive(url: str, profile: Path, script: Callable[[Page], Awaitable[T]], size: tuple[int, int],
                 timeout: float) -> T:
    import aiohttp

    port = free_port()
    proc = subprocess.Popen([chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
                             "--remote-debugging-address=127.0.0.1", f"--window-size={size[0]},{size[1]}",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        end = time.monotonic() + 60
        while True:
            try:
                targets = _targets(port)
                if targets:
                    break
            except OSError:
                pass
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("headless Chromium's DevTools endpoint did not answer")
            time.sleep(0.3)
        async with aiohttp.ClientSession() as http, http.ws_connect(targets[0]["webSocketDebuggerUrl"],
                                                                    max_msg_size=0) as ws:
            page = Page(ws)
            await page.send("Page.enable")
            await page.send("Page.navigate", url=url)
            return await asyncio.wait_for(script(page), timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # Chromium's helpers are in its process group
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def drive(url: str, profile: str | Path, script: Callable[[Page], Awaitable[T]], *,
          size: tuple[int, int] = (1600, 1000), timeout: float = 180.0) -> T:
    """Open `url` in a fresh headless Chromium and return what `await script(page)` returns."""
    return asyncio.run(_drive(url, Path(profile), script, size, timeout))
