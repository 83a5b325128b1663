"""A web view of runs on the HTTP server's port: the list of runs, and a page per run with its workflow drawn
(Mermaid, shipped in static/), its steps, child runs and review rounds, live progress, and a rating form.

Read-only but for the rating. Pages are rendered on the server (pages.py); routes and their checks are in
app.py. `mcp-conductor ui` serves it and prints its address.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import webbrowser

from .app import is_ui_path, ui_address, with_web_ui

__all__ = ["announce", "is_ui_path", "ui_address", "with_web_ui"]


def announce(host: str, port: int, *, token: bool, to_stdout: bool = False, open_browser: bool = False) -> str:
    """Say where the view is (stderr; also stdout for `mcp-conductor ui`), and open it in a browser once the
    server accepts connections. Never with the token in the address: the login form takes it."""
    url = ui_address(host, port)
    how = " (sign in with CONDUCTOR_TOKEN)" if token else ""
    sys.stderr.write(f"mcp-conductor: runs in a browser at {url}{how}\n")
    sys.stderr.flush()
    if to_stdout:
        sys.stdout.write(url + "\n")
        sys.stdout.flush()
    if open_browser:
        threading.Thread(target=_open_when_listening, args=(url, port), daemon=True).start()
    return url


def _open_when_listening(url: str, port: int, wait_s: float = 30.0) -> None:
    deadline = time.monotonic() + wait_s
    host = url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    if not webbrowser.open(url):
        sys.stderr.write(f"mcp-conductor: no browser could be opened here; open {url} yourself\n")
