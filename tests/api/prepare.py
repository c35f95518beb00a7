#!/usr/bin/env python3
"""Gives schemathesis real data to reach past the 404s (tests/api/run.sh runs this).

Against a running engine and simulator: activates simulated org 0 (manual activation) and
waits until it is completed, syncs its inventory, keeps a pending HTTPS activation for the setup
pages (POST /provision), makes one error answer and waits until GET /admin/errors/<id> finds
it, and signs in to the console. Writes the schemathesis configuration (dictionaries that
schemathesis uses for half of the path parameters) and prints the console's session cookie.

Usage: prepare.py ENGINE_URL SIM_URL ADMIN_TOKEN CONFIG_OUT
"""
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

BASE, SIM, TOKEN, OUT = sys.argv[1:5]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def call(method, url, body=None, form=None, auth=True):
    """(status, headers, parsed JSON or text)."""
    data, ctype = None, None
    if body is not None:
        data, ctype = json.dumps(body).encode(), "application/json"
    elif form is not None:
        data, ctype = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, method=method)
    if auth:
        req.add_header("Authorization", f"Bearer {TOKEN}")
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with OPENER.open(req, timeout=10) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")


def expect(what, status, want, body):
    if status != want:
        sys.exit(f"prepare: {what} answered {status}, not {want}: {body}")


def until(what, limit, cond):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            sys.exit(f"prepare: {what} not within {limit} s")
        time.sleep(0.1)


def activation_jwt():
    status, _, body = call("POST", f"{SIM}/_sim/orgs/0/activation", auth=False)
    expect("the simulator's activation JWT", status, 200, body)
    return body["jwt"]


# A completed tenant with its inventory.
status, _, tenant = call("POST", f"{BASE}/admin/activations", body={"jwt": activation_jwt()})
expect("POST /admin/activations", status, 202, tenant)
tid = tenant["tenant_id"]
until(f"tenant {tid} completed", 20,
      lambda: call("GET", f"{BASE}/admin/tenants/{tid}")[2].get("provisioning_state") == "completed")
status, _, report = call("POST", f"{BASE}/admin/tenants/{tid}/inventory/sync")
expect("the inventory sync", status, 200, report)
status, _, devices = call("GET", f"{BASE}/admin/tenants/{tid}/devices")
expect("GET /admin/tenants/<id>/devices", status, 200, devices)
device_ids = [d["id"] for d in devices[:2]] or ["no-device"]

# A pending HTTPS activation (its setup page).
status, _, body = call("POST", f"{BASE}/provision", body={"jwt": activation_jwt()}, auth=False)
expect("POST /provision", status, 200, body)
session = body["redirectUrl"].rsplit("/", 1)[1]

# An error answer, findable by its trackingId once the support log has it.
status, _, body = call("GET", f"{BASE}/admin/tenants/prepare-unknown")
expect("GET /admin/tenants/prepare-unknown", status, 404, body)
tracking = body["trackingId"]
until(f"trackingId {tracking} in the support log", 20,
      lambda: call("GET", f"{BASE}/admin/errors/{tracking}")[0] == 200)

# A console session.
status, headers, body = call("POST", f"{BASE}/console/login", form={"token": TOKEN}, auth=False)
expect("POST /console/login", status, 303, body)
cookie = headers["Set-Cookie"].split(";", 1)[0]

values = lambda *vs: "[" + ", ".join(json.dumps(v) for v in vs) + "]"
with open(OUT, "w") as f:
    f.write(f"""\
[dictionaries.tenants]
values = {values(tid)}
[dictionaries.devices]
values = {values(*device_ids)}
[dictionaries.commands]
values = {values("Message.Send")}
[dictionaries.sessions]
values = {values(session)}
[dictionaries.tracking]
values = {values(tracking)}
[parameters]
"path.tenant_id" = {{ dictionary = "tenants", probability = 0.5 }}
"path.device_id" = {{ dictionary = "devices", probability = 0.5 }}
"path.name" = {{ dictionary = "commands", probability = 0.5 }}
"path.session" = {{ dictionary = "sessions", probability = 0.5 }}
"path.tracking_id" = {{ dictionary = "tracking", probability = 0.5 }}
""")
print(f"tenant {tid} completed with {len(devices)} devices; setup session {session}; "
      f"trackingId {tracking}; console signed in", file=sys.stderr)
print(cookie)
