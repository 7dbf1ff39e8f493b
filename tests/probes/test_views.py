import json
import re
from pathlib import Path

import circuitsvis
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from probes.views import (
    attention_view,
    attribution_bar,
    patching_grid,
    patching_heatmap,
    remote_references,
    save_html,
    save_png,
)

INLINE_JS = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
NETWORK = re.compile(
    r"""src\s*=\s*["']?(https?:)?//"""
    r"""|import[^;]*?from\s*["'](https?:)?//|import\(\s*["'](https?:)?//"""
    r"""|unpkg|jsdelivr|cdn""",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def prompt(world, vocab):
    example = vocab.example(world, 0, "forward")
    tokens = torch.tensor(example.prompt + example.answer)
    return tokens, [vocab.token_name(t) for t in tokens.tolist()]


def test_attention_view_shows_the_cached_attention_pattern(trained_one_layer, prompt):
    tokens, labels = prompt
    view = attention_view(trained_one_layer, tokens, 0, labels, heads=[1, 3])
    _, cache = trained_one_layer.run_with_cache(tokens[None])
    pattern = cache["blocks.0.attn.hook_pattern"][0, [1, 3]]
    # the whole pattern of both heads, read back from the page (a first row alone is [1, 0, 0] for every head)
    shown = json.JSONDecoder().raw_decode(view.local_src, view.local_src.index('"attention": ') + len('"attention": '))[0]
    torch.testing.assert_close(torch.tensor(shown), pattern, rtol=0, atol=1e-7)
    assert not torch.allclose(pattern[0], pattern[1])  # the two heads differ, so a wrong head would show
    assert '"attentionHeadNames": ["L0H1", "L0H3"]' in view.local_src
    assert f'"tokens": ["{labels[0]}"' in view.local_src
    # a layer as a table gives it (a NumPy integer: pandas' unique()) is one layer, as an int is; it had failed in list()
    import numpy as np

    again = attention_view(trained_one_layer, tokens, np.int64(0), labels, heads=[1, 3]).local_src
    read = json.JSONDecoder().raw_decode(again, again.index('"attention": ') + len('"attention": '))[0]
    assert read == shown and '"attentionHeadNames": ["L0H1", "L0H3"]' in again


def test_saved_page_is_self_contained(trained_one_layer, prompt, tmp_path):
    tokens, labels = prompt
    path = save_html(attention_view(trained_one_layer, tokens, 0, labels), tmp_path / "views" / "attention.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert NETWORK.findall(page) == [] and remote_references(page) == []
    bundle = INLINE_JS.read_text(encoding="utf-8")
    assert bundle[:2000] in page and bundle[-2000:].replace("</script>", "") in page  # the JS, inlined
    assert len(page) > 1_000_000 and "CircuitsVis.render(" in page
    again = save_html(attention_view(trained_one_layer, tokens, 0, labels), tmp_path / "again.html")
    assert again.read_bytes() == path.read_bytes()  # circuitsvis's random element id replaced by a content hash
    assert len(set(re.findall(r"circuits-vis-[0-9a-f]+-\d+", page))) == 1


def test_the_cdn_version_would_have_been_caught(tmp_path):
    class CdnView:
        local_src = ('<script type="module">import { render } from '
                     '"https://unpkg.com/circuitsvis/dist/cdn/esm.js";</script>')

    assert remote_references(CdnView.local_src)
    with pytest.raises(ValueError, match="references the network"):
        save_html(CdnView(), tmp_path / "never-written.html")
    assert not (tmp_path / "never-written.html").exists()


def test_attention_view_of_several_layers_puts_their_heads_side_by_side(vocab, prompt):
    from models.transformer import build_model

    model = build_model("tiny", vocab.d_vocab, seed=0).eval()
    tokens, labels = prompt
    view = attention_view(model, tokens, [0, 1], labels, heads=[0, 2])
    assert '"attentionHeadNames": ["L0H0", "L0H2", "L1H0", "L1H2"]' in view.local_src
    _, cache = model.run_with_cache(tokens[None])
    last_row = ", ".join(str(float(v)) for v in cache["blocks.1.attn.hook_pattern"][0, 2, -1])
    assert f"[{last_row}]]], \"attentionHeadNames\"" in view.local_src  # the last head's last row comes last
    with pytest.raises(ValueError, match=r"layer 2 is out of range"):
        attention_view(model, tokens, [0, 2], labels)


def test_attention_view_rejects_bad_input(trained_one_layer, prompt):
    tokens, labels = prompt
    with pytest.raises(ValueError, match=r"layer 1 is out of range.*layers 0\.\.0"):
        attention_view(trained_one_layer, tokens, 1, labels)
    with pytest.raises(ValueError, match=r"head 4 is out of range.*heads 0\.\.3"):
        attention_view(trained_one_layer, tokens, 0, labels, heads=[4])
    with pytest.raises(ValueError, match="2 token labels for 3 tokens"):
        attention_view(trained_one_layer, tokens, 0, labels[:2])
    with pytest.raises(ValueError, match="one sequence"):
        attention_view(trained_one_layer, torch.stack([tokens, tokens]), 0, labels)


def test_attribution_bar_draws_one_bar_per_component_and_direction(tmp_path):
    table = pd.DataFrame({
        "component": ["embed", "L0H0", "L0 mlp"] * 4,
        "direction": ["forward"] * 6 + ["reverse"] * 6,
        "attribution": [1.0, 2.0, -1.0, 3.0, 4.0, -3.0, 0.5, 0.0, 0.5, 0.5, 0.0, 0.5],
    })
    figure = attribution_bar(table)
    axis = figure.axes[0]
    assert isinstance(figure, Figure)
    assert [t.get_text() for t in axis.get_yticklabels()] == ["embed", "L0H0", "L0 mlp"]
    widths = [bar.get_width() for bar in axis.patches]
    assert widths == [2.0, 3.0, -2.0, 0.5, 0.0, 0.5]  # forward means, then reverse means
    top = attribution_bar(table, top=1)
    assert [t.get_text() for t in top.axes[0].get_yticklabels()] == ["L0H0"]
    path = save_png(figure, tmp_path / "bar.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_patching_heatmap_labels_its_axes(tmp_path):
    values = torch.tensor([[0.0, 1.0], [0.5, 0.25], [1.0, 0.0]])
    figure = patching_heatmap(values, row_labels=["L0", "L1", "L2"], col_labels=["x", "→"], title="recovered")
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["L0", "L1", "L2"]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["x", "→"]
    assert torch.equal(torch.tensor(axis.images[0].get_array()), values)
    assert save_png(figure, tmp_path / "heat.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="2 row labels for 3 rows"):
        patching_heatmap(values, row_labels=["L0", "L1"])


def test_a_patching_grid_s_colour_scale_is_its_row_s_finite_values(tmp_path):
    """A NaN cell (a site with no value) sets no scale, in whichever panel it is: each row's scale is ±(largest
    finite |value| of all its panels). A NaN in the first panel had made the scale ±1e-9 (every other cell at an
    end of the colour map), and one in a later panel had left that panel's values out of it. A row with no finite
    value has no scale and is refused, naming the row."""
    nan = float("nan")
    exact = torch.tensor([[nan, 1.0], [-2.0, 0.5]])
    estimated = torch.tensor([[0.25, -3.0], [nan, 0.0]])
    rows = [("resid_pre", [("exact", exact), ("attribution", torch.tensor([[0.5, 0.0], [0.25, -0.5]]))],
             ["L0", "L1"], ["a", "b"], "position"),
            ("heads", [("exact", torch.tensor([[1.5, 0.0], [0.0, 0.0]])), ("attribution", estimated)],
             ["L0", "L1"], ["H0", "H1"], "head")]
    figure = patching_grid(rows)
    panels = [axis for axis in figure.axes if axis.images]
    assert [axis.images[0].get_clim() for axis in panels] == [(-2.0, 2.0)] * 2 + [(-3.0, 3.0)] * 2
    assert save_png(figure, tmp_path / "grid.png").stat().st_size > 1000
    blank = torch.full((2, 2), nan)
    with pytest.raises(ValueError, match=r"row 'heads' has no finite value in any of its panels "
                                         r"\(exact, attribution\)"):
        patching_grid([rows[0], ("heads", [("exact", blank), ("attribution", blank)], ["L0", "L1"], ["H0", "H1"],
                                 "head")])
