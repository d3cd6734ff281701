"""The report, opened in headless Chromium: the widgets draw their tokens and nothing errors.

Chromium is driven through the DevTools protocol (``websocket-client``): the test loads the saved
report from disk, waits for circuitsvis to render, reads the DOM, switches a widget's head
selector, and collects console messages, uncaught exceptions and network requests. CI installs
Chromium (Debian package ``chromium``); without it this test fails and names the install command.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_analysis import make_acts

import lensprobe as lp
from lensprobe import viz
from lensprobe.analysis import top_examples
from lensprobe.train import TrainConfig
from lensprobe.viz import ReportEntry, report

pytestmark = pytest.mark.browser

INSTALL = "apt-get update && apt-get install -y chromium"
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    """Path of a Chromium binary (``LENSPROBE_CHROMIUM`` overrides); fail with the fix if none."""
    override = os.environ.get("LENSPROBE_CHROMIUM")
    if override:
        return override
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"the browser test needs headless Chromium; install it with: {INSTALL}")


class DevTools:
    """A headless Chromium and one page, driven over the DevTools protocol."""

    def __init__(self, binary: str, timeout: float = 60.0):
        try:
            import websocket
        except ImportError:
            pytest.fail("the browser test needs websocket-client: pip install websocket-client")
        self.profile = tempfile.mkdtemp(prefix="lensprobe-chromium-")
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "--window-size=1400,2000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.events: list[dict[str, Any]] = []
        self.next_id = 0
        self.session: str | None = None
        deadline = time.monotonic() + timeout
        url = None
        assert self.proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            url = match.group(1) if match else None
        if url is None:
            self.close()
            pytest.fail("Chromium started but did not open its DevTools port")
        self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def open(self, url: str) -> None:
        """Load ``url`` in a fresh tab (events of earlier tabs are forgotten)."""
        self.session = None
        self.events.clear()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", {"url": url})
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 45.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for: {expression}")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and log errors seen so far."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(f"exception: {json.dumps(params['exceptionDetails'])[:500]}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(f"console.{params['type']}: {json.dumps(params.get('args'))[:500]}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(f"log error: {params['entry'].get('text')}")
        return out

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the browser we started, and its children
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


WIDGETS = """JSON.stringify([...document.querySelectorAll('.lensprobe-cv')].map(el => ({
  component: el.dataset.component,
  children: el.childElementCount,
  text: el.innerText.replaceAll('\\u00a0', ' '),
})))"""

SELECT_HEAD = """(() => {
  const widget = document.querySelectorAll('.lensprobe-cv')[WIDGET];
  const select = widget.querySelector('select#layer-selector');
  const set = Object.getOwnPropertyDescriptor(HTMLSelectElement.prototype, 'value').set;
  set.call(select, 'VALUE');
  select.dispatchEvent(new Event('change', {bubbles: true}));
  return true;
})()"""


def sample_tags(text: str) -> list[str]:
    """The tags of the samples a TopkSamples widget shows (``#row label=.. pred=.. peak=..``)."""
    tags = re.findall(r"#\d+ label=\S+ pred=\S+ (?:peak|score)=\S+", text)
    assert tags, f"no sample tag in the widget text: {text[:300]!r}"
    return tags


def tags(examples, names, score: str) -> list[str]:
    """The tag of each example: its row, true class, predicted class and score."""
    return [
        f"#{e.row} label={names[e.label]} pred={names[e.predicted]} {score}={e.score:.3g}"
        for e in examples
    ]


@pytest.fixture(scope="module")
def browser():
    devtools = DevTools(chromium())
    try:
        yield devtools
    finally:
        devtools.close()


def test_report_renders_in_chromium_without_errors(tmp_path: Path, browser: DevTools):
    acts = make_acts(n=60, seed=11, min_len=3, vocab=15)
    fast = TrainConfig(max_steps=15, lr=2e-2)
    kw = dict(weight_decays=(0.0, 0.1), n_folds=2)
    torch.manual_seed(0)
    att = lp.run_protocol(acts, probe="attention", n_heads=2, train=fast, **kw)
    mean = lp.run_protocol(acts, probe="mean", **kw)
    path = report(
        [ReportEntry.from_result(att, acts), ReportEntry.from_result(mean, acts)],
        tmp_path / "report.html",
        k=4,
    )
    expected = top_examples(att.probe, acts, k=4, rows=att.test_rows)

    browser.open(path.resolve().as_uri())
    browser.wait_for(
        "document.querySelectorAll('.lensprobe-cv').length === 3 && "
        "[...document.querySelectorAll('.lensprobe-cv')].every(el => el.childElementCount > 0)"
    )
    widgets = json.loads(browser.evaluate(WIDGETS))
    images = browser.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
    entropy_rows = browser.evaluate(
        "document.querySelectorAll('.lensprobe-entropy tbody tr').length"
    )
    metric_rows = browser.evaluate(
        "[...document.querySelector('#metrics + table').tBodies[0].rows].map(r => r.innerText)"
    )
    verdicts = browser.evaluate(
        "[...document.querySelector('#comparisons + table').tBodies[0].rows].map(r => r.innerText)"
    )

    # switch the per-head widget to head 1: its list must become head 1's top examples
    browser.evaluate(SELECT_HEAD.replace("WIDGET", "0").replace("VALUE", "1"))
    want_head1 = tags(expected.by_head[1], expected.class_names, "peak")
    switched = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        switched = json.loads(browser.evaluate(WIDGETS))[0]["text"]
        if sample_tags(switched) == want_head1:
            break
        time.sleep(0.25)
    problems = browser.problems()
    requests = browser.requests()
    # the error check is live: an error thrown now is seen
    browser.evaluate("setTimeout(() => { throw new Error('lensprobe-check'); }, 0); true")
    browser.wait_for("new Promise(r => setTimeout(() => r(true), 200))")
    browser.evaluate("true")  # flush the events
    assert any("lensprobe-check" in p for p in browser.problems())

    assert [w["component"] for w in widgets] == ["TopkSamples"] * 3
    assert all(w["children"] > 0 for w in widgets)
    head_view, class_view, mean_view = (w["text"] for w in widgets)
    names = expected.class_names
    # the per-head view drew head 0's top sequences in order, with their tokens
    assert sample_tags(head_view) == tags(expected.by_head[0], names, "peak")
    assert all("".join(e.tokens) in head_view for e in expected.by_head[0])
    # the class view drew class 0's top sequences with their tokens
    assert sample_tags(class_view) == tags(expected.by_class[0], names, "score")
    assert all("".join(e.tokens) in class_view for e in expected.by_class[0])
    mean_top = top_examples(mean.probe, acts, k=4, rows=mean.test_rows)
    assert sample_tags(mean_view) == tags(mean_top.by_class[0], names, "score")
    # switching the head selector shows head 1's list
    assert want_head1 != tags(expected.by_head[0], names, "peak")
    assert sample_tags(switched) == want_head1
    assert all("".join(e.tokens) in switched for e in expected.by_head[1])
    assert len(images) == 3 and all(images), "a matplotlib figure did not decode"
    assert entropy_rows == 2 + 1  # two heads and the overall row
    # every shown metric row carries n and its interval; the comparison is lp.compare's
    for row, res in zip(metric_rows, (att, mean), strict=True):
        ci = res.summary["accuracy"]  # one split: Wilson over its test rows
        assert f"[{ci.low:.3f}, {ci.high:.3f}]" in row
        assert f"/ {res.n_test}" in row and "1 split (wilson)" in row
    cmp = lp.compare(att, mean)
    (shown,) = verdicts
    who = {"a better": "attention-2 better", "b better": "mean better"}.get(
        cmp.verdict, "undecided"
    )
    interval = "–" if math.isnan(cmp.low) else f"[{cmp.low:+.3f}, {cmp.high:+.3f}]"
    assert f"{cmp.difference:+.3f}" in shown and interval in shown
    assert who in shown  # the raw verdict, then the Holm-adjusted one
    assert problems == [], "the page logged errors:\n" + "\n".join(problems)
    offline = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert offline == [], f"the report reached the network: {offline}"


TOKENS = """(() => {
  const widget = document.querySelectorAll('.lensprobe-cv')[WIDGET];
  const spans = [...widget.querySelectorAll('.colored-tokens > span > span')];
  return spans.map(s => [s.innerText.replaceAll('\\u00a0', ' '), getComputedStyle(s).backgroundColor]);
})()"""

CLICK_LABEL = """(() => {
  const widget = document.querySelectorAll('.lensprobe-cv')[WIDGET];
  const label = [...widget.querySelectorAll('div')].find(
    d => d.children.length === 0 && d.textContent === 'LABEL');
  label.click();
  return true;
})()"""

FULL = "rgb(0, 0, 255)"  # circuitsvis' colour at the top of a positive scale


def test_inline_widgets_draw_every_token_and_switch_heads(tmp_path: Path, browser: DevTools):
    acts = make_acts(n=8, seed=12, min_len=6)
    acts.token_strs[3][0] = "<bos>"  # must show as text, not vanish as an unknown tag
    probe = lp.AttentionProbe(acts.d_model, n_heads=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        probe.query.copy_(torch.randn(probe.query.shape, generator=gen))
    attention = viz.attention_widget(probe, acts, index=3)
    contributions = viz.contributions_widget(lp.MeanProbe(acts.d_model), acts, index=3)
    # what a notebook shows: each output carries its own copy of the library (_repr_html_)
    path = tmp_path / "widgets.html"
    outputs = attention._repr_html_() + contributions._repr_html_()
    path.write_text(f"<!DOCTYPE html><html><body>{outputs}</body></html>", encoding="utf-8")
    want = list(acts.token_strs[3])
    attn = torch.tensor(attention.props["values"])
    assert len({int(a) for a in attn.argmax(dim=0)}) > 1, "heads should peak on different tokens"

    browser.open(path.resolve().as_uri())
    browser.wait_for(
        "document.querySelectorAll('.lensprobe-cv').length === 2 && "
        "[...document.querySelectorAll('.lensprobe-cv')].every(el => el.childElementCount > 0)"
    )
    for h in range(3):
        browser.evaluate(CLICK_LABEL.replace("WIDGET", "0").replace("LABEL", f"head {h}"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            drawn = browser.evaluate(TOKENS.replace("WIDGET", "0"))
            darkest = [i for i, (_, colour) in enumerate(drawn) if colour == FULL]
            if darkest == [int(attn[:, h].argmax())]:
                break
            time.sleep(0.2)
        assert [t for t, _ in drawn] == want
        assert darkest == [int(attn[:, h].argmax())], f"head {h} is not the one drawn"
    contrib = browser.evaluate(TOKENS.replace("WIDGET", "1"))
    assert [t for t, _ in contrib] == want
    assert browser.problems() == []


# -- what the page looks like: a screenshot, the widgets drawn, the metrics-only notice --------

RECT = """(() => {
  const el = document.querySelector('SELECTOR');
  if (!el) return null;
  const r = el.getBoundingClientRect();
  return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width,
          height: r.height, visible: el.offsetHeight > 0 && getComputedStyle(el).display !== 'none'};
})()"""


def rect(browser: DevTools, selector: str) -> dict[str, Any] | None:
    return browser.evaluate(RECT.replace("SELECTOR", selector))


def screenshot(browser: DevTools, region: dict[str, Any] | None = None) -> bytes:
    """A PNG of the page (``region``: one element's box, scrolled to or not)."""
    params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
    if region is not None:
        keys = ("x", "y", "width", "height")
        params["clip"] = {**{k: region[k] for k in keys}, "scale": 1}
    return base64.b64decode(browser.send("Page.captureScreenshot", params)["data"])


def ink(png: bytes) -> tuple[tuple[int, int], float]:
    """The image's size and the share of its pixels that are not (near) white."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    counts = image.histogram()  # 256 grey levels
    return image.size, sum(counts[:225]) / sum(counts)


@pytest.fixture(scope="module")
def trained():
    acts = make_acts(n=60, seed=13, min_len=3, vocab=15)
    fast = TrainConfig(max_steps=15, lr=2e-2)
    kw = dict(weight_decays=(0.0, 0.1), n_folds=2)
    torch.manual_seed(0)
    att = lp.run_protocol(acts, probe="attention", n_heads=2, train=fast, **kw)
    mean = lp.run_protocol(acts, probe="mean", **kw)
    return acts, att, mean


def test_screenshot_shows_the_figures_and_every_widget(tmp_path: Path, browser: DevTools, trained):
    acts, att, mean = trained
    entries = [ReportEntry.from_result(att, acts), ReportEntry.from_result(mean, acts)]
    path = report(entries, tmp_path / "report.html", k=3)
    expected = len(re.findall(r"CircuitsVis\.render\(", path.read_text()))
    assert expected == 3  # attention: per head and per class; mean: per class

    browser.open(path.resolve().as_uri())
    browser.wait_for(
        f"document.querySelectorAll('.lensprobe-cv').length === {expected} && "
        "[...document.querySelectorAll('.lensprobe-cv')].every(el => el.childElementCount > 0)"
    )
    drawn = browser.evaluate(
        "[...document.querySelectorAll('.lensprobe-cv')].filter(el => el.offsetHeight > 20 && "
        "el.innerText.includes('pred=')).length"
    )
    assert drawn == expected, "a circuitsvis widget is empty or shows no sample tags"
    assert browser.evaluate("document.querySelectorAll('img.figure').length") == 3
    assert rect(browser, "#activations-notice") is None  # activations given: no notice

    page = screenshot(browser)
    (width, height), page_ink = ink(page)
    assert len(page) > 50_000 and width >= 1000 and height > 2000, (len(page), width, height)
    assert 0.01 < page_ink < 0.6
    figure = rect(browser, "img.figure")  # the metrics figure
    assert figure is not None and figure["visible"] and figure["height"] > 150
    _, figure_ink = ink(screenshot(browser, figure))
    assert figure_ink > 0.04, f"the metrics figure drew almost nothing ({figure_ink:.3f})"
    widget = rect(browser, ".lensprobe-cv")
    assert widget is not None and widget["height"] > 50
    _, widget_ink = ink(screenshot(browser, widget))
    assert widget_ink > 0.01, "the first widget drew almost nothing"
    problems = browser.problems()
    assert problems == [], "the page logged errors:\n" + "\n".join(problems)


def test_metrics_only_report_says_so_at_the_top(tmp_path: Path, browser: DevTools, trained):
    _, att, mean = trained
    path = report([att, mean], tmp_path / "metrics-only.html")
    browser.open(path.resolve().as_uri())
    notice = rect(browser, "#activations-notice")
    assert notice is not None and notice["visible"], "no visible metrics-only notice"
    text = browser.evaluate("document.getElementById('activations-notice').innerText")
    assert text.startswith("Metrics only") and "--acts STORE" in text
    assert (
        browser.evaluate(
            "document.getElementById('activations-notice').previousElementSibling.tagName"
        )
        == "H1"
    )
    title = rect(browser, "h1")
    figure = rect(browser, "img.figure")
    assert title is not None and figure is not None
    assert title["y"] < notice["y"] < figure["y"]  # under the title, above the metrics
    assert notice["y"] < 300, "the notice is not in the page header"
    assert browser.evaluate("document.querySelectorAll('.lensprobe-cv').length") == 0
    _, notice_ink = ink(screenshot(browser, notice))
    assert notice_ink > 0.02, "the notice drew no text"
    assert browser.problems() == []
