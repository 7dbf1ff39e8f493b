"""Token labels are data, never markup: an attention view keeps a label such as
``</script><script>…`` inside its JSON string (escaped for a <script> context), and the report
sandboxes the views it inlines (issue #19, HTML)."""

from __future__ import annotations

import json
import re

import torch

from analyses.report import _view_tag
from models.transformer import build_model
from probes.views import attention_view, save_html

HOSTILE = ["</script><script>document.title='owned'</script>", "a & b <!--", "]]> \u2028 \u2029", "<img src=x>"]


def test_hostile_token_labels_stay_strings_inside_the_script(tmp_path):
    model = build_model("tiny", 50, "absolute", 0)
    page = save_html(attention_view(model, torch.tensor([1, 2, 3, 4]), 0, HOSTILE), tmp_path / "view.html")
    text = page.read_text(encoding="utf-8")
    assert text.count("</script>") == 1  # the view's own script, closed once, at its end
    call = text[text.rfind("render("):]
    props_text = re.search(r"(\{.*\})\s*\)\s*</script>", call, re.S).group(1)
    assert not re.search("[<>&\u2028\u2029]", props_text)  # nothing a parser could read as markup
    props = json.loads(props_text)
    assert props["tokens"] == HOSTILE  # the same labels, shown as text


def test_the_report_sandboxes_each_view(tmp_path):
    model = build_model("tiny", 50, "absolute", 0)
    page = save_html(attention_view(model, torch.tensor([1, 2]), 0, ["a", "b"]), tmp_path / "attention.html")
    tag = _view_tag(page)
    assert tag.startswith('<iframe sandbox="allow-scripts" srcdoc="') and "allow-same-origin" not in tag
