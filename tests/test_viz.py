"""Widget props (pure functions), offline HTML, and the report's structure (no browser needed)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from test_analysis import D, make_acts, randomised

import lensprobe as lp
from lensprobe import viz
from lensprobe.analysis import attention_entropy, top_examples
from lensprobe.train import TrainConfig
from lensprobe.viz import ReportEntry, render_report, report
from lensprobe.viz.widgets import entropy_html

RENDER_CALL = re.compile(r"CircuitsVis\.render\(\"([\w-]+)\", CircuitsVis\.(\w+), (.*)\);</script>")


def embedded_props(fragment: str) -> list[tuple[str, str, dict]]:
    """(div id, component, props) of every circuitsvis render call in an HTML fragment."""
    return [
        (m.group(1), m.group(2), json.loads(m.group(3))) for m in RENDER_CALL.finditer(fragment)
    ]


# -- pure props --------------------------------------------------------------------------------


def test_token_values_props_escape_tokens_and_use_a_symmetric_scale():
    values = torch.tensor([[0.5, -2.0], [float("nan"), 1.0], [0.25, 0.0]])
    props = viz.token_values_props(["<bos>", " a&b", "\n"], values, ["x", "y"])
    assert props["tokens"] == ["&lt;bos&gt;", " a&amp;b", "\n"]
    assert props["values"] == [[0.5, -2.0], [0.0, 1.0], [0.25, 0.0]]  # NaN drawn as 0
    assert props["positiveBounds"] == [0.5, 2.0] and props["negativeBounds"] == [-0.5, -2.0]
    assert props["labels"] == ["x", "y"]
    json.dumps(props, allow_nan=False)
    with pytest.raises(ValueError, match="rows"):
        viz.token_values_props(["a"], values, ["x", "y"])
    with pytest.raises(ValueError, match="labels"):
        viz.token_values_props(["a", "b", "c"], values, ["x"])


def test_attention_props_name_every_head():
    attn = torch.softmax(torch.randn(5, 3), dim=0)
    props = viz.attention_props(list("abcde"), attn)
    assert props["labels"] == ["head 0", "head 1", "head 2"]
    assert torch.allclose(torch.tensor(props["values"]), attn, atol=1e-5)


def test_top_examples_props_per_class_and_per_head():
    acts = make_acts(n=24, seed=2)
    probe = randomised("attention", n_outputs=1, n_heads=2, scale=0.5)
    top = top_examples(probe, acts, k=3)
    props = viz.top_examples_props(top, "class")
    assert props["zerothDimensionLabels"] == ["class 0: c0", "class 1: c1"]
    assert props["firstDimensionLabels"] == [
        "contribution to the class logit",
        "attention of head 0",
        "attention of head 1",
    ]
    for c in range(2):
        for j in range(3):
            assert len(props["tokens"][c][j]) == 3 == len(props["activations"][c][j])
        for s, e in enumerate(top.by_class[c]):
            tokens = props["tokens"][c][0][s]
            assert tokens[0].startswith(f"#{e.row} c{e.label} ") and tokens[1:] == list(e.tokens)
            contrib = torch.tensor(props["activations"][c][0][s])
            assert contrib[0] == 0.0  # the tag stays white
            sign = 1.0 if c == 1 else -1.0  # class 0 of a one-logit probe: minus the logit
            torch.testing.assert_close(
                contrib[1:], sign * e.contributions[:, 0], atol=1e-5, rtol=1e-4
            )
            torch.testing.assert_close(
                torch.tensor(props["activations"][c][2][s][1:]),
                e.attention[:, 1],
                atol=1e-5,
                rtol=1e-4,
            )
    heads = viz.top_examples_props(top, "head")
    assert heads["zerothDimensionName"] == "Head"
    assert heads["firstDimensionLabels"] == ["attention", "contribution to the logit"]
    for h in range(2):
        for s, e in enumerate(top.by_head[h]):
            assert heads["tokens"][h][0][s][0].startswith(f"#{e.row} ")
            torch.testing.assert_close(
                torch.tensor(heads["activations"][h][0][s][1:]),
                e.attention[:, h],
                atol=1e-5,
                rtol=1e-4,
            )
            torch.testing.assert_close(
                torch.tensor(heads["activations"][h][1][s][1:]),
                e.head_contributions[:, h, 0],
                atol=1e-5,
                rtol=1e-4,
            )
    pooled = top_examples(lp.MeanProbe(D), acts, k=2)
    assert viz.top_examples_props(pooled, "class")["firstDimensionLabels"] == [
        "contribution to the class logit"
    ]
    with pytest.raises(ValueError, match="view='class'"):
        viz.top_examples_props(pooled, "head")


def test_entropy_props_follow_the_analysis():
    acts = make_acts(n=15)
    ent = attention_entropy(randomised("attention", scale=0.3), acts)
    props = viz.entropy_props(ent)
    assert [r["head"] for r in props["heads"]] == [0, 1, 2]
    for row, expected in zip(props["heads"], ent.per_head(), strict=True):
        assert row["mean_ratio"] == pytest.approx(expected["mean_ratio"])
        assert row["mean_uniform"] == pytest.approx(expected["mean_uniform"])
    assert props["overall"]["n_heads"] == 3 and props["n_sequences"] == 15
    json.dumps(props, allow_nan=False)
    table = entropy_html(props)
    assert table.count("<tr") == 1 + 3 + 1  # header, heads, overall


# -- widgets render offline -------------------------------------------------------------------


def test_widgets_inline_circuitsvis_and_never_touch_the_network(monkeypatch):
    import urllib.request

    import circuitsvis.utils.render as cv_render

    def no_network(*args, **kwargs):
        raise AssertionError("a widget tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(cv_render, "internet_on", no_network)
    acts = make_acts(n=10)
    probe = randomised("attention", n_heads=2, scale=0.5)
    widget = viz.attention_widget(probe, acts, index=4)
    html = widget._repr_html_()
    assert "var CircuitsVis" in html and "unpkg.com" not in html and "sourceMappingURL" not in html
    ((uid, component, props),) = embedded_props(html)
    assert component == "ColoredTokensMulti" and props == widget.props
    assert f'id="{uid}"' in html
    assert props["tokens"] == list(acts.token_strs[4]) and props["labels"] == ["head 0", "head 1"]
    assert "row 4" in widget.header and "label <b>c0</b>" in widget.header
    # the library is inlined once per page, not once per widget
    text = viz.page(
        [
            widget,
            viz.top_examples_widget(probe, acts, k=2, view="head"),
            viz.entropy_widget(probe, acts),
        ]
    )
    assert text.count("var CircuitsVis") == 1 and len(embedded_props(text)) == 2


def test_a_hostile_token_cannot_break_out_of_the_script():
    acts = make_acts(n=3)
    acts.token_strs[1][0] = "</script><script>alert(1)</script>"
    widget = viz.attention_widget(randomised("attention"), acts, index=1)
    html = widget.html(include_library=False)
    assert "</script><script>alert" not in html
    ((_, _, props),) = embedded_props(html)
    assert props["tokens"][0] == "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"


def test_contribution_widget_for_pooled_probes_and_errors():
    acts = make_acts(n=6)
    probe = randomised("max", n_outputs=1)
    widget = viz.contributions_widget(probe, acts, index=2)
    assert widget.props["labels"] == ["to c0", "to c1"]
    values = torch.tensor(widget.props["values"])
    torch.testing.assert_close(values[:, 0], -values[:, 1])
    with pytest.raises(TypeError, match="token_contributions"):
        viz.attention_widget(probe, acts)
    with pytest.raises(TypeError, match="activations"):
        viz.top_examples_widget(probe)


def test_widget_save_writes_a_standalone_page(tmp_path):
    acts = make_acts(n=5)
    path = viz.attention_widget(randomised("attention"), acts, 0).save(tmp_path / "w.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("var CircuitsVis") == 1


def test_no_public_name_means_two_things():
    """A name exported by the top level and by a public submodule is the same object in both."""
    import importlib

    seen: dict[str, tuple[str, object]] = {}
    for module_name in ["lensprobe", *(f"lensprobe.{m}" for m in lp._SUBMODULES)]:
        module = importlib.import_module(module_name)
        defined = [  # a module without __all__: the functions and classes it defines
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module_name
        ]
        for name in getattr(module, "__all__", defined):
            value = getattr(module, name)
            if name in seen and isinstance(value, type(importlib)):
                continue  # a submodule attribute (lp.metrics) next to the module itself
            if name in seen:
                where, other = seen[name]
                assert value is other, f"{name}: {where}.{name} and {module_name}.{name} differ"
            seen.setdefault(name, (module_name, value))


# -- the report (structure; the browser test checks the rendering) ---------------------------


@pytest.fixture(scope="module")
def results():
    acts = make_acts(n=60, seed=9, min_len=3)
    fast = TrainConfig(max_steps=15, lr=2e-2)
    kw = dict(weight_decays=(0.0, 0.1), n_folds=2)
    att = lp.run_protocol(acts, probe="attention", n_heads=2, train=fast, **kw)
    mean = lp.run_protocol(acts, probe="mean", **kw)
    return acts, att, mean


def test_report_is_one_offline_page_with_every_section(tmp_path, results):
    acts, att, mean = results
    entries = [ReportEntry.from_result(att, acts), ReportEntry.from_result(mean, acts), mean]
    path = report(entries, tmp_path / "sub" / "r.html", title="T <1>", description="toy & co")
    text = path.read_text()
    assert "<title>T &lt;1&gt;</title>" in text and "toy &amp; co" in text
    assert text.count("var CircuitsVis") == 1
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing loads remotely
    assert text.count('<img class="figure"') == 3  # metrics, CV, entropy of the attention probe
    assert text.count("data:image/png;base64,") == 3
    components = [c for _, c, _ in embedded_props(text)]
    assert components == ["TopkSamples"] * 3  # head + class views (attention), class view (mean)
    assert 'id="probe-blocks-3-hook-resid-post-attention-2"' in text
    assert text.count("<tr class=") == 3  # three rows of metrics (one without activations)
    rows = att.test_rows.tolist()
    for _, _, props in embedded_props(text):
        for tags in props["tokens"][0][0]:
            assert int(tags[0].split()[0][1:]) in rows  # examples come from the test rows


def test_report_entry_checks_width_and_names_labels(results):
    acts, att, mean = results
    assert ReportEntry.from_result(att).label == "attention-2"
    assert ReportEntry.from_result(mean).label == "mean"
    with pytest.raises(ValueError, match="width"):
        ReportEntry(label="x", probe=lp.MeanProbe(D + 1), metrics={}, acts=acts)
    with pytest.raises(ValueError, match="at least one entry"):
        render_report([])


def test_top_examples_tag_escapes_class_names():
    acts = make_acts(n=12, seed=3)
    probe = randomised("mean", n_outputs=1)
    top = top_examples(probe, acts, k=2)
    top = dataclasses.replace(top, class_names=("<neg>", "a & <b>"))
    props = viz.top_examples_props(top, "class")
    tags = [sample[0] for lists in props["tokens"] for samples in lists for sample in samples]
    assert tags and all("<" not in t for t in tags)
    assert any("&lt;neg&gt;" in t for t in tags) and any("a &amp; &lt;b&gt;" in t for t in tags)
