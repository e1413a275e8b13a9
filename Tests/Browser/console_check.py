#!/usr/bin/env python3
"""Drives Debian's headless Chromium through the admin console as a person would, over the
DevTools protocol on a pipe (--remote-debugging-pipe: no extra Python packages), and prints what
it saw as one JSON object for the Swift test to check.

usage: console_check.py CHROMIUM BASE_URL TOKEN SCREENSHOT.png

1. opens the overview, reads the route map and the transports table;
2. waits 2.5 s, opens it again and reads them again (the counters and rates must move);
3. takes a screenshot of the overview;
4. follows its link to the channels page and reads that table;
5. opens the first channel with dead letters, opens one (its <details>), ticks it and "as
   fire-and-forget", presses "Replay selected", accepts the confirmation, reads the note the
   page shows after, and looks again 2 s later (the replayed call went through: it is gone).
"""
import base64, json, os, shutil, subprocess, sys, tempfile, time

chromium, base, token, screenshot = sys.argv[1:5]
profile = tempfile.mkdtemp(prefix="switchyard-chromium-")  # the browser's profile and its log

host_to_browser = os.pipe()
browser_to_host = os.pipe()


def child_fds():
    # Through fresh descriptors: dup2 onto the same number would keep close-on-exec.
    reading, writing = os.dup(host_to_browser[0]), os.dup(browser_to_host[1])
    os.dup2(reading, 3)
    os.dup2(writing, 4)


browser = subprocess.Popen(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
     "--remote-debugging-pipe", "--window-size=1200,1500", "--user-data-dir=" + profile,
     "about:blank"],
    preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL,
    stderr=open(profile + "/chromium.log", "wb"))
os.close(host_to_browser[0])
os.close(browser_to_host[1])
outgoing = os.fdopen(host_to_browser[1], "wb", buffering=0)
incoming = os.fdopen(browser_to_host[0], "rb", buffering=0)
pending = b""
next_id = 0
events = []
responses = {}


def read_message():
    global pending
    while b"\0" not in pending:
        chunk = incoming.read(65536)
        if not chunk:
            raise SystemExit("chromium closed the pipe")
        pending += chunk
    message, _, pending = pending.partition(b"\0")
    return json.loads(message)


def call(method, params=None, session=None, timeout=30):
    global next_id
    next_id += 1
    request = {"id": next_id, "method": method, "params": params or {}}
    if session:
        request["sessionId"] = session
    outgoing.write(json.dumps(request).encode() + b"\0")
    wanted = next_id
    deadline = time.time() + timeout
    while time.time() < deadline:
        if wanted in responses:
            message = responses.pop(wanted)
            if "error" in message:
                raise SystemExit(f"{method} failed: {message['error']}")
            return message.get("result", {})
        message = read_message()
        if "id" in message:
            responses[message["id"]] = message
            continue
        events.append(message)
        if message.get("method") == "Page.javascriptDialogOpening":
            # A person reads the confirmation and presses OK.
            events.append({"dialog": message["params"]["message"]})
            call("Page.handleJavaScriptDialog", {"accept": True}, session=message.get("sessionId"))
    raise SystemExit(f"{method}: no answer in {timeout} s")


target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
call("Page.enable", session=session)
call("Network.enable", session=session)
call("Network.setExtraHTTPHeaders", {"headers": {"Authorization": "Bearer " + token}}, session=session)


def evaluate(expression):
    result = call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=session)
    if "exceptionDetails" in result:
        raise SystemExit(f"{expression}: {result['exceptionDetails']}")
    return result["result"].get("value")


def open_page(url):
    call("Page.navigate", {"url": url}, session=session)
    wait_for_load(url)


def wait_for_load(prefix):
    deadline = time.time() + 20
    while time.time() < deadline:
        state = evaluate("[document.readyState, location.href]")
        if state and state[0] == "complete" and state[1].startswith(prefix):
            return
        time.sleep(0.1)
    raise SystemExit(f"{prefix} did not load")


READ_OVERVIEW = """(() => {
  const cells = row => [...row.querySelectorAll('td')].map(td => td.textContent.trim());
  const table = id => [...document.querySelectorAll('#' + id + ' tr')].slice(1).map(cells);
  return {
    state: document.querySelector('#state')?.textContent,
    routeMap: [...document.querySelectorAll('#route-map g.route text')].map(t => t.textContent),
    mapTransports: [...document.querySelectorAll('#route-map g.transport text')].map(t => t.textContent),
    transports: table('transports'),
    transportHeadings: [...document.querySelectorAll('#transports th')].map(th => th.textContent),
    deadLetterChannels: table('dead-letter-channels'),
    deadLetterLinks: [...document.querySelectorAll('#dead-letter-channels a')].map(a => a.href),
  };
})()"""

seen = {}
open_page(base + "/")
seen["first"] = evaluate(READ_OVERVIEW)
time.sleep(2.5)
open_page(base + "/")
seen["second"] = evaluate(READ_OVERVIEW)
shot = call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
with open(screenshot, "wb") as out:
    out.write(base64.b64decode(shot["data"]))

# The channels page, opened from the overview's link, as a person would.
evaluate("document.querySelector('#channels-link').click()")
wait_for_load(base + "/channels")
seen["channels"] = evaluate("""[...document.querySelectorAll('#channels tr')].slice(1)
  .map(row => [...row.querySelectorAll('td')].map(td => td.textContent.trim()))""")
seen["channelLinks"] = evaluate("[...document.querySelectorAll('#channels a')].map(a => a.href)")

# The first channel with dead letters, opened from the overview's link.
links = seen["second"]["deadLetterLinks"]
rows = seen["second"]["deadLetterChannels"]
counted = [link for link, row in zip(links, rows) if row and row[3].isdigit() and int(row[3]) > 0]
if counted:
    open_page(counted[0])
    seen["deadLetters"] = evaluate("""(() => ({
      count: document.querySelector('#count')?.textContent,
      ids: [...document.querySelectorAll('#dead-letters tr.letter')].map(tr => tr.dataset.id),
      calls: [...document.querySelectorAll('#dead-letters tr.letter')].map(tr => tr.children[2].textContent),
    }))()""")
    first = seen["deadLetters"]["ids"][0] if seen["deadLetters"]["ids"] else None
    if first:
        # Open it: the decoded call and its history, as a person reads them.
        seen["opened"] = evaluate(f"""(() => {{
          const row = document.querySelector('#dead-letters tr.letter[data-id="{first}"]');
          const details = row.querySelector('details');
          details.open = true;
          return details.querySelector('table.detail').innerText;
        }})()""")
        evaluate(f"""document.querySelector('#dead-letters tr.letter[data-id="{first}"] input[name=ids]').click()""")
        # Its caller stopped waiting long ago: replay it as fire-and-forget, as the page suggests.
        evaluate("document.querySelector('input[name=fire_and_forget]').click()")
        evaluate("document.querySelector('#replay').click()")
        time.sleep(0.5)  # the dialog is answered inside call(); the form then posts and redirects
        wait_for_load(counted[0].split("?")[0])
        deadline = time.time() + 10
        while time.time() < deadline and not evaluate("document.querySelector('#note')?.textContent"):
            call("Runtime.evaluate", {"expression": "1"}, session=session)  # lets pending events (the dialog) through
            time.sleep(0.2)
        note = evaluate("document.querySelector('#note')?.textContent")
        # The blocked card went through on this attempt: the letter does not come back.
        time.sleep(2)
        open_page(counted[0])
        seen["replayed"] = {"id": first, "note": note,
                            "idsAfter": evaluate("[...document.querySelectorAll('#dead-letters tr.letter')].map(tr => tr.dataset.id)")}
seen["dialogs"] = [event["dialog"] for event in events if "dialog" in event]
print(json.dumps(seen))
browser.terminate()
browser.wait(timeout=10)
shutil.rmtree(profile, ignore_errors=True)
