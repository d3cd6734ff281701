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
            tag = f"#{e.row} label=c{e.label} pred=c{e.predicted} score="
            assert tokens[0].startswith(tag) and tokens[1:] == list(e.tokens)
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


# -- the figures: legends, colours, ticks and labels kept apart (measured, no browser) --------

HOOKS = ("blocks.4.hook_resid_post", "blocks.9.hook_resid_post", "blocks.14.hook_resid_post")
PROBES = ("attention-1", "attention-2", "attention-8", "mean", "last")


def hook_acts(n=40, seed=9, hooks=HOOKS):
    """The same sequences at several hooks (noisier copies of one set of activations)."""
    base = make_acts(n=n, seed=seed, min_len=3)
    out = {}
    for i, hook in enumerate(hooks):
        gen = torch.Generator().manual_seed(i)
        values = base.values + 0.5 * torch.randn(base.values.shape, generator=gen)
        meta = dataclasses.replace(base.meta, hook=hook)
        out[hook] = lp.Activations(
            meta,
            values,
            base.offsets,
            base.token_ids,
            base.labels,
            token_strs=base.token_strs,
            texts=base.texts,
        )
    return out


def grid_entries(grid, dataset="data"):
    cells, choices, _ = grid.of(dataset)
    entries = [
        ReportEntry.from_result(c.result, label=c.probe, hook=c.hook, record=c.record())
        for c in cells
    ]
    return entries, choices


@pytest.fixture(scope="module")
def grid15():
    """3 hooks x 5 probes, one split: the case users found unreadable."""
    from lensprobe.train import ProtocolConfig

    protocol = ProtocolConfig(
        weight_decays=(0.0, 1e-2, 0.1), n_folds=2, train=TrainConfig(max_steps=5, lr=2e-2)
    )
    return lp.sweep(hook_acts(), PROBES, protocol=protocol)


def drawn(fig):
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def series_colours(ax):
    """Colours of the named lines of one panel (the series a legend lists)."""
    from matplotlib.colors import to_hex

    return [to_hex(ln.get_color()) for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def assert_readable(fig):
    """Legends outside every panel, no colour twice in a panel, no two x tick labels overlapping."""
    renderer = drawn(fig)
    axes = visible_axes(fig)
    legends = [*fig.legends, *(ax.get_legend() for ax in axes if ax.get_legend())]
    assert legends, "the figure has no legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "a legend covers a panel"
    for ax in axes:
        colours = series_colours(ax)
        assert len(colours) >= 2 and len(set(colours)) == len(colours), colours
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert len(labels) >= 3
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i, a in enumerate(boxes):
            for j in range(i + 1, len(boxes)):
                assert not a.overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())


def test_metrics_figure_of_3_hooks_x_5_probes_is_small_multiples(grid15):
    from lensprobe.viz.figures import metrics_plot

    entries, choices = grid_entries(grid15)
    assert len(entries) == 15 and choices
    fig = metrics_plot(entries, choices)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == list(PROBES)  # one panel per probe
    assert_readable(fig)
    for ax in axes:  # accuracy and AUROC over the three layers, with 95% bands
        named = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        assert [ln.get_label() for ln in named] == ["test accuracy", "test AUROC", "chance"]
        assert all(len(ln.get_xdata()) == 3 for ln in named[:2])
        assert len(ax.collections) >= 2  # the bands (and the CV pick's star)


def test_cv_figure_of_3_hooks_x_5_probes_has_a_colour_per_hook(grid15):
    from lensprobe.viz.figures import cv_plot

    entries, _ = grid_entries(grid15)
    fig = cv_plot(entries)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == list(PROBES)
    assert_readable(fig)
    for ax in axes:
        assert [ln.get_label() for ln in ax.get_lines()] == list(HOOKS)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(HOOKS)


def test_identical_series_stay_visible(grid15):
    """Three hooks with the very same CV curve: dodged sideways, each with its own marker."""
    from lensprobe.viz.figures import cv_plot

    entries, _ = grid_entries(grid15)
    one = next(e for e in entries if e.label == "mean")
    same = [dataclasses.replace(one, hook=h) for h in HOOKS]
    (ax,) = visible_axes(cv_plot(same))
    lines = ax.get_lines()
    assert len(lines) == 3
    assert len({tuple(ln.get_ydata()) for ln in lines}) == 1  # the same values...
    assert len({tuple(ln.get_xdata()) for ln in lines}) == 3  # ...drawn side by side
    assert len({ln.get_marker() for ln in lines}) == 3
    assert len(set(series_colours(ax))) == 3


def test_palette_never_repeats_a_colour():
    from lensprobe.viz.figures import palette

    for n in (1, 2, 5, 8, 9, 15, 40, 300):
        for ordered in (False, True):
            colours = palette(n, ordered=ordered)
            assert len(colours) == n == len(set(colours)), (n, ordered)


def test_bar_value_labels_sit_clear_of_the_error_bars(grid15):
    """One hook: a bar per probe, its value written above the top of its 95% error bar."""
    from matplotlib.container import BarContainer
    from matplotlib.transforms import Bbox

    from lensprobe.viz.figures import metrics_plot

    entries, _ = grid_entries(grid15)
    one = [e for e in entries if e.hook_name == HOOKS[1]]
    fig = metrics_plot(one)
    renderer = drawn(fig)
    axes = visible_axes(fig)
    assert len(axes) == 2
    for ax in axes:
        (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert bars.errorbar is not None, "no error bars drawn"
        _, caps, (stems,) = bars.errorbar.lines
        boxes = []  # each error bar's stem and caps, in pixels
        for segment in stems.get_segments():
            (x0, y0), (x1, y1) = ax.transData.transform(segment)
            boxes.append(Bbox([[min(x0, x1) - 1, min(y0, y1) - 1], [max(x0, x1) + 1, max(y0, y1)]]))
        for cap in caps:
            boxes += [cap_box(cap, xy, ax) for xy in cap.get_xydata()]
        labels = [t for t in ax.texts if t.get_text()]
        assert len(labels) == len(PROBES) == len(stems.get_segments())
        tops = [b.y1 for b in boxes[: len(labels)]]  # the stems, in bar order
        for text, top in zip(labels, tops, strict=True):
            box = text.get_window_extent(renderer)
            assert box.y0 >= top, f"{text.get_text()} is not above its error bar"
            assert not any(box.overlaps(b) for b in boxes), (
                f"an error bar crosses {text.get_text()}"
            )
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1 :])


def cap_box(cap, xy, ax):
    """Pixels a cap marker covers (its width is the marker size, in points)."""
    from matplotlib.transforms import Bbox

    x, y = ax.transData.transform(xy)
    half = cap.get_markersize() * ax.figure.dpi / 72 / 2 + 1
    return Bbox([[x - half, y - 1], [x + half, y + 1]])


def test_figures_are_embedded_as_offline_pngs(grid15):
    from lensprobe.viz.figures import cv_figure, metrics_figure

    entries, choices = grid_entries(grid15)
    for img in (metrics_figure(entries, choices), cv_figure(entries)):
        assert img.startswith('<img class="figure"') and "data:image/png;base64," in img


# -- the metrics-only notice and the index page over datasets ---------------------------------


def test_a_report_without_activations_says_so_under_its_title(results):
    acts, att, mean = results
    bare = render_report([att, mean], title="T")
    head = bare[bare.index("<h1>") :]
    after_title = head[head.index("</h1>") + len("</h1>") :].lstrip()
    assert after_title.startswith('<div class="notice" id="activations-notice"')
    assert "Metrics only" in after_title.split("</div>")[0] and "--acts STORE" in head
    assert head.index("activations-notice") < head.index('id="metrics"')
    full = render_report([ReportEntry.from_result(att, acts), ReportEntry.from_result(mean, acts)])
    assert "activations-notice" not in full
    partial = render_report([ReportEntry.from_result(att, acts), mean])
    assert "1 of 2 probes have no activations" in partial and "mean at" in partial


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """A results folder of two datasets, each 2 hooks x 2 probes."""
    from lensprobe.experiment import run_grid
    from lensprobe.grid import Grid, save
    from lensprobe.train import ProtocolConfig

    out = tmp_path_factory.mktemp("results")
    protocol = ProtocolConfig(weight_decays=(0.0, 0.1), n_folds=2)
    cells = []
    for i, name in enumerate(("facts & co", "needle")):
        acts = hook_acts(n=30 + 10 * i, seed=i, hooks=HOOKS[:2])
        cells += run_grid(acts, ["mean", "last"], dataset=name, protocol=protocol)
    grid = Grid.build(cells, folder=out)
    save(grid, out)
    return out, grid


def index_links(page: str) -> list[str]:
    import html as html_lib

    body = page[page.index('<table class="metrics" id="datasets">') :]
    return [html_lib.unescape(h) for h in re.findall(r'href="([^"]+)"', body)]


def test_report_command_writes_an_index_across_datasets(two_datasets, capsys):
    import urllib.parse

    from lensprobe.cli import main, steps
    from lensprobe.cli.commands import NO_STORE

    out, grid = two_datasets
    assert main(["report", "--results", str(out)]) == 0
    printed = capsys.readouterr().out
    assert NO_STORE in printed  # the console says the reports lack attention views
    index = out / "index.html"
    assert f"index: {index}" in printed
    page = index.read_text()
    assert page.count("<tbody><tr>") == 1 and page.count("<tr>") == 1 + 2  # head + a row each
    assert "facts &amp; co" in page and "needle" in page and "var CircuitsVis" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    links = sorted(set(index_links(page)))
    assert links == sorted(f"report-{steps.slug(d)}.html" for d in grid.datasets)
    for link in links:
        target = out / urllib.parse.unquote(link)
        assert target.is_file() and "activations-notice" in target.read_text()
    for dataset in grid.datasets:  # the best probe by CV, with the interval the report shows
        _, choices, _ = grid.of(dataset)
        best = max(choices, key=lambda c: c.cv_score)
        est = best.estimates["accuracy"]
        assert f'{est.mean:.3f} <small class="ci">[{est.low:.3f}, {est.high:.3f}]' in page
        assert f"{best.probe}<br><small>at <code>{best.hook}</code>" in page


def test_a_run_of_several_datasets_ends_with_an_index(two_datasets, tmp_path, capsys):
    from lensprobe.cli import steps
    from lensprobe.viz.index import write_index

    _, grid = two_datasets
    jobs = [steps.ReportJob(d, None, f"dataset {d}") for d in grid.datasets]
    steps.finish(list(grid.cells), jobs, str(tmp_path))
    page = (tmp_path / "index.html").read_text()
    assert f"index: {tmp_path / 'index.html'}" in capsys.readouterr().out
    assert all((tmp_path / link).is_file() for link in index_links(page))
    assert len(set(index_links(page))) == 2
    with pytest.raises(ValueError, match="no cells of dataset"):
        write_index(grid, {"other": tmp_path / "x.html"}, tmp_path / "i.html")
