#!/usr/bin/env python3
"""Redraws docs/console-overview.png: runs `xapi-stream demo`, lets data flow for a few minutes
(the chart draws one bar per minute), adds one rejected webhook (so "Latest errors" has a row),
signs in to the console with headless Chromium (Debian's chromium + chromium-driver, as the
browser tests use) and saves the overview at 1280 x 800.

    python3 docs/tools/overview_screenshot.py [--binary target/release/xapi-stream] [--minutes 3]
"""
import argparse
import base64
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request


def call(base, method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["value"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", default="target/release/xapi-stream")
    p.add_argument("--minutes", type=float, default=3)
    p.add_argument("--out", default="docs/console-overview.png")
    args = p.parse_args()
    demo = subprocess.Popen([args.binary, "demo", "--rate", "120", "--seconds", "600"],
                            stdout=subprocess.PIPE, text=True)
    console = engine = None
    for line in demo.stdout:
        print(line, end="", flush=True)
        if m := re.search(r"engine listening at (\S+)", line):
            engine = m.group(1)
        if m := re.match(r"\s+console\s+(\S+)", line):
            console = m.group(1)
            break
    if not console:
        sys.exit("the demo printed no console address")
    tenants = json.load(urllib.request.urlopen(urllib.request.Request(
        engine + "/admin/tenants", headers={"Authorization": "Bearer dev-admin-token"})))
    bad = urllib.request.Request(engine + f"/tenants/{tenants[0]['tenant_id']}/webhook",
                                 data=b'{"type":"status"}', method="POST",
                                 headers={"X-Spark-Signature": "0" * 40,
                                          "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(bad)
    except urllib.error.HTTPError as e:
        print("a rejected webhook:", e.code)
    print(f"letting data flow for {args.minutes} min", flush=True)
    time.sleep(args.minutes * 60)

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    driver = subprocess.Popen(["/usr/bin/chromedriver", f"--port={port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/status")
            break
        except OSError:
            time.sleep(0.1)
    caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"]}}}}
    session = call(base, "POST", "/session", caps)["sessionId"]
    sb = f"/session/{session}"
    call(base, "POST", sb + "/url", {"url": console})
    token = call(base, "POST", sb + "/element", {"using": "css selector", "value": "input[name=token]"})
    el = list(token.values())[0]
    call(base, "POST", sb + f"/element/{el}/value", {"text": "dev-admin-token"})
    button = list(call(base, "POST", sb + "/element",
                       {"using": "css selector", "value": "button[type=submit]"}).values())[0]
    call(base, "POST", sb + f"/element/{button}/click", {})
    time.sleep(2)
    call(base, "POST", sb + "/window/rect", {"width": 1280, "height": 800})
    png = base64.b64decode(call(base, "GET", sb + "/screenshot"))
    open(args.out, "wb").write(png)
    print("saved", args.out)
    call(base, "DELETE", sb)
    driver.kill()
    demo.terminate()
    demo.wait(timeout=60)


if __name__ == "__main__":
    main()
