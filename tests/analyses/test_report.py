"""`revlens report` on real run folders, rendered in headless Chromium (installed by `make test`)."""

import importlib
import json
import re
import shutil
import subprocess

import matplotlib.image
import pytest

from analyses import paper
from analyses.bilinear import BilinearConfig, reproduce_bilinear
from analyses.cli import main
from analyses.probe import probe
from analyses.report import KINDS, ReportError, find_runs, render_report, write_report
from analyses.reproduce import ReversalConfig, reproduce_reversal

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=10000", "--window-size=1280,8000",
                  # a sandboxed iframe has an opaque origin, so site isolation puts it in a process of its own,
                  # which a headless --screenshot leaves blank (the view runs: its JavaScript reports no error)
                  "--disable-site-isolation-trials")
IFRAME = re.compile(r'<iframe sandbox="allow-scripts" srcdoc="[^"]*"', re.S)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real runs, small: every `reproduce` experiment in an `all/` folder as `reproduce all` writes
    it, and a probe of the reversal checkpoint (with its circuitsvis attention views)."""
    root = tmp_path_factory.mktemp("runs")
    reproduce_reversal(root / "all" / "reversal", ReversalConfig(steps=10), progress=False)
    reproduce_bilinear(root / "all" / "bilinear", BilinearConfig(dims=(16,), steps=20), progress=False)
    small = ReversalConfig(steps=5, n_pairs=60)
    paper.reproduce_chain(root / "all" / "chain", paper.ChainConfig(steps=5, n_triples=60), False)
    paper.reproduce_in_context(root / "all" / "in-context", paper.InContextConfig(steps=5, n_x=30, control_pairs=40),
                               False)
    paper.reproduce_multi_token(root / "all" / "multi-token", paper.MultiTokenConfig(ks=(2,), reversal=small), False)
    paper.reproduce_positional(root / "all" / "positional",
                               paper.PositionalConfig(positionals=("none",), reversal=small), False)
    paper.reproduce_embeddings(root / "all" / "embeddings", paper.EmbeddingConfig(steps=5, n_pairs=60), False)
    run = root / "all" / "reversal"
    probe(run / "checkpoints", run / "facts.jsonl", root / "probe")  # writes circuitsvis attention views too
    return root


def chromium(page, tmp_path):
    """Render ``page`` in headless Chromium: its screenshot (H × W × 3 floats in [0, 1]) and the
    URLs the page asked the network for (any scheme but file: and data:), read from the net log.

    Chromium makes requests of its own (updates, sign-in) whatever the flags; the page's are the
    ones in its network isolation key, whose top frame is the file:// page.
    """
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: `make test` installs it (Debian package chromium)"
    shot, net_log = tmp_path / "shot.png", tmp_path / "net.json"
    subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={net_log}",
                    f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, timeout=180, check=True)
    text = net_log.read_text()
    log = json.loads(text if text.rstrip().endswith("}") else text.rstrip().rstrip(",") + "]}")  # cut short: close it
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = [e["params"] for e in log["events"] if e["type"] == start_job]
    from_page = [r["url"] for r in requests if r.get("network_isolation_key", "").startswith("file://")]
    return matplotlib.image.imread(shot)[..., :3], [u for u in from_page if not u.startswith(("file:", "data:"))]


def ink(image):
    """Fraction of pixels that are not near-white."""
    return float((image.min(-1) < 0.9).mean())


def test_chromium_catches_a_network_request_and_a_blank_page(tmp_path):
    page = tmp_path / "control.html"
    frame = '&lt;script src=&quot;https://example.invalid/in-frame.js&quot;&gt;&lt;/script&gt;'
    page.write_text(f'<!DOCTYPE html><img src="http://example.invalid/x.png"><iframe srcdoc="{frame}"></iframe>')
    image, requests = chromium(page, tmp_path)
    assert set(requests) == {"http://example.invalid/x.png", "https://example.invalid/in-frame.js"}
    assert ink(image) < 0.01


def test_report_renders_every_run_offline(runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "--runs", str(runs / "probe"), str(runs / "all"), "--out", str(out)]) == 0
    assert "10 runs" in capsys.readouterr().out  # probe, 7 experiments, multi-token/k2, positional/none
    page = out.read_text(encoding="utf-8")
    figures = [p for p in runs.rglob("*.png") if "checkpoints" not in str(p)]
    assert len(figures) >= 19 and page.count('src="data:image/png;base64,') == len(figures)  # every figure inlined
    views = [p for p in runs.rglob("*.html")]
    assert views and page.count('<iframe sandbox="allow-scripts" srcdoc=') == len(views) and "CircuitsVis.render(" in page
    assert not re.search(r"https?://|//cdn|@import|url\(", IFRAME.sub("", page))  # the page around the view
    kinds = ("reversal", "bilinear", "chain", "in-context", "multi-token", "positional", "embeddings", "probe")
    titles = [KINDS[kind].title for kind in kinds]
    one_screen = ["reversal world: 340 trained sentences", "chain world: 162 trained", "in-context world: 30 x",
                  "reversal world with k-token entities", "reversal world, 60 pairs, k = 1", "cos(W_E[A_i], W_E[B_j])"]
    for text in titles + one_screen + ["first 20 of 3400 rows", "most_asymmetric_circuit", "Contents"]:
        assert text in page, text

    image, requests = chromium(out, tmp_path)
    assert requests == []
    assert ink(image) > 0.05
    saturated = image.max(-1) - image.min(-1) > 0.4
    assert saturated.mean() > 0.01  # coloured figures, not only text
    circuitsvis_blue = (image[..., 2] > 0.9) & (image[..., :2].max(-1) < 0.1)
    assert circuitsvis_blue.sum() > 2000  # the attention view's JavaScript ran inside the page


def test_parent_folder_expands_and_nested_runs_follow(runs):
    found = find_runs([runs / "all"])
    assert [run.label.removeprefix(f"{runs}/all/") for run in found] == [
        "bilinear", "chain", "embeddings", "in-context", "multi-token", "multi-token/k2", "positional",
        "positional/none", "reversal"]
    assert [run.kind for run in found] == ["bilinear", "chain", "embeddings", "in-context", "multi-token", "reversal",
                                           "positional", "reversal", "reversal"]
    in_context = found[3]
    assert "control/" in in_context.others and [p.name for p in in_context.figures] == ["curves.png"]
    assert [p.name for p in found[-1].figures] == ["curves.png", "heatmap.png"]
    assert [run.kind for run in find_runs([runs / "probe"])] == ["probe"]


def test_every_known_kind_has_a_formatter_that_exists():
    for name, kind in KINDS.items():
        if kind.formatter:
            module, function = kind.formatter.split(":")
            assert callable(getattr(importlib.import_module(module), function)), name


def test_unknown_kind_renders_with_its_own_and_fallback_captions(runs, tmp_path):
    folder = tmp_path / "new-kind"
    folder.mkdir()
    shutil.copy(runs / "all" / "reversal" / "curves.png", folder / "growth.png")
    shutil.copy(runs / "all" / "reversal" / "heatmap.png", folder / "extra.png")
    (folder / "table.csv").write_text("step,entry\n0,0.1\n10,0.9\n")
    summary = {"experiment": "weight-dynamics", "final_entry": 0.9, "per_step": [{"step": 0}, {"step": 10}],
               "captions": {"growth.png": "Y[A, B] over training."}}
    (folder / "summary.json").write_text(json.dumps(summary))
    page = render_report(find_runs([folder]))
    assert "Weight dynamics" in page and "Y[A, B] over training." in page
    assert "no caption is known for this file name" in page  # extra.png
    assert "<td>0.9</td>" in page and "2 rows" in page
    assert page.count("data:image/png;base64,") == 2
    (folder / "growth.png").unlink()
    with pytest.raises(ReportError, match=r"new-kind: growth.png missing \(summary.json names it\)"):
        find_runs([folder])


def _copy_run(runs, tmp_path, name="reversal"):
    return shutil.copytree(runs / "all" / name, tmp_path / name, ignore=shutil.ignore_patterns("checkpoints*"))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "summary.json").unlink(), r"reversal: no summary.json, so the run did not finish"),
    (lambda run: _truncate(run / "summary.json"), r"reversal/summary.json: not valid JSON \(line \d+"),
    (lambda run: (run / "heatmap.png").unlink(), r"reversal: heatmap.png missing \(every 'reversal' run writes it\)"),
    (lambda run: _truncate(run / "curves.png"), r"reversal/curves.png: truncated PNG"),
    (lambda run: (run / "logits.csv").write_text(""), r"reversal/logits.csv: unreadable CSV"),
    (lambda run: [p.unlink() for p in run.rglob("*") if p.is_file()], r"reversal: empty folder"),
    # a tuple: the folders given instead of the run, which would show one run twice
    (lambda run: (run, run), r"reversal: given twice to --runs; its section would appear twice"),
    (lambda run: (run, run / ".." / run.name), r"\.\./reversal: given twice to --runs"),
    (lambda run: (run.parent, run), r"reversal: in the report twice, from --runs .+ and .+reversal \(one holds"),
])
def test_half_written_run_is_refused_and_the_old_report_kept(runs, tmp_path, damage, message):
    run = _copy_run(runs, tmp_path)
    out = tmp_path / "report.html"
    write_report([run], out)
    before = out.read_text(encoding="utf-8")
    given = damage(run)
    with pytest.raises(ReportError, match=message):
        write_report(given if isinstance(given, tuple) else [run], out)
    assert out.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "reversal"]  # no temporary file left


def test_half_written_run_of_a_parent_folder_is_named(runs, tmp_path):
    parent = tmp_path / "all"
    _copy_run(runs, parent)
    _copy_run(runs, parent, "bilinear")
    (parent / "bilinear" / "summary.json").unlink()
    with pytest.raises(ReportError, match=r"all/bilinear: no summary.json, so this run of .*all did not finish .*; if "
                                          r"it is no run, give --runs the run folders beside it instead of .*all$"):
        find_runs([parent])
    (parent / "reversal" / "summary.json").write_text(json.dumps({"experiment": "reversal", "train_prob": 1.0}))
    (parent / "bilinear").rename(tmp_path / "elsewhere")
    with pytest.raises(ReportError, match=r"all/reversal/summary.json: lacks 'config'"):
        render_report(find_runs([parent]))
    # a value of another type was worded as a missing key ("lacks unsupported format string passed to ...")
    summary = json.loads((runs / "all" / "reversal" / "summary.json").read_text())
    (parent / "reversal" / "summary.json").write_text(json.dumps({**summary, "train_prob": "n/a"}))
    with pytest.raises(ReportError, match=r"all/reversal/summary.json: holds a value a 'reversal' run does not write "
                                          r"\((TypeError|ValueError): "):
        render_report(find_runs([parent]))


def test_a_parent_folder_s_link_to_a_run_is_refused_not_left_out(runs, tmp_path):
    """A parent folder's subfolder that is a link to a run was left off the page without a word ("N runs", one
    missing); a link that holds no run (a loop back to the parent) is still passed over."""
    parent = tmp_path / "all"
    _copy_run(runs, parent)
    (parent / "loop").symlink_to(".")
    assert [r.label for r in find_runs([parent])] == [str(parent / "reversal")]
    _copy_run(runs, tmp_path, "bilinear")
    (parent / "bilinear").symlink_to(tmp_path / "bilinear")
    with pytest.raises(ReportError, match=r"all/bilinear: a link to a run folder, which the report does not follow"):
        find_runs([parent])


def test_a_nested_run_is_as_whole_as_the_run_that_holds_it_and_a_kept_copy_is_no_run(tmp_path):
    """A run nested in a command's folder (zhu-settings' one reversal run per setting) has no manifest of its
    own: given alone to the report, its summary changed or its parent's run unfinished, it is refused (before, it was
    rendered with the changed number); a copy of a run that a rerun kept in the folder (files no run wrote) is not
    rendered as one of the run's own."""
    from analyses.cli import main

    run = tmp_path / "settings"
    command = ["reproduce", "zhu-settings", "--steps", "2", "--depths", "1", "--quiet", "--threads", "1"]
    assert main([*command, "--out", str(run)]) == 0
    nested = run / "default"
    assert [r.label for r in find_runs([nested])] == [str(nested)]
    shutil.copytree(nested, tmp_path / "copy")
    summary = json.loads((nested / "summary.json").read_text())
    (nested / "summary.json").write_text(json.dumps({**summary, "train_prob": 0.123}))
    with pytest.raises(ReportError, match=r"the run that holds .*default does not match its manifest: "
                                          r"default/summary.json changed"):
        find_runs([nested])
    shutil.copytree(tmp_path / "copy", run / "backup")  # another run's files, put in the folder by hand
    shutil.copy(nested / "curves.png", nested / "old.png")  # and a figure no run wrote, in the nested run
    assert main([*command, "--out", str(run)]) == 0  # the rerun keeps them and lists them as kept
    assert {"backup/summary.json", "default/old.png"} <= set(json.loads((run / "manifest.json").read_text())["kept"])
    labels = [r.label for r in find_runs([run])]
    assert str(nested) in labels and not any("backup" in label for label in labels)
    # given alone, the nested run and the kept copy had been read without the enclosing run's kept files: old.png
    # shown as the run's own figure, the copy rendered as a checked part of the run
    [alone] = find_runs([nested])
    assert "curves.png" in [p.name for p in alone.figures] and "old.png" not in [p.name for p in alone.figures]
    with pytest.raises(ReportError, match=r"backup: files a rerun of .*settings kept in place"):
        find_runs([run / "backup"])
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ReportError, match=r"the run that holds .*default is incomplete"):
        find_runs([nested])


def test_cli_refuses_a_missing_folder_with_exit_2(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "--runs", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert f"revlens: error: {tmp_path / 'nowhere'}: no such run folder" in capsys.readouterr().err
    assert not out.exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"experiment": "weight-dynamics", "final_entry": 0.9}))
    assert main(["report", "--runs", str(run), str(run), "--out", str(out)]) == 2
    assert f"revlens: error: {run}: given twice to --runs" in capsys.readouterr().err
    assert not out.exists()


def test_a_report_is_never_written_into_a_sweep_folder(tmp_path, capsys):
    """A sweep's folder has a summary.json but no manifest, so `report --out SWEEP/report.html` was written there, and
    the next `report --runs SWEEP` showed it as one of the sweep's own files (an iframe of the last page, and so on).
    Like a run's folder it is refused as the report's place, by name; so is a sweep's folder before its first summary
    (the sweep writes it last), and one not given to --runs."""
    from analyses.sweep import Sweep, aggregate, prepare

    sweep, other = tmp_path / "sweep", tmp_path / "other"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"experiment": "weight-dynamics", "final_entry": 0.9}))

    def refused(runs, out, marker):
        code = main(["report", "--runs", *map(str, runs), "--out", str(out)])
        error = capsys.readouterr().err
        assert code == 2 and f"{out}: inside the run folder {sweep} (it holds {marker})" in error, error
        assert not out.exists()

    prepare(Sweep("reversal", (0,), {"lr": (1e30,)}), sweep)
    refused([other], sweep / "report.html", "sweep.toml")  # its summary not written yet
    aggregate(Sweep("reversal", (0,), {"lr": (1e30,)}), sweep)
    refused([sweep], sweep / "report.html", "sweep.toml")
    refused([other], sweep / "trials" / "r.html", "sweep.toml")
    # a summary.json alone (another tool's, in a folder above) does not make a folder a run's
    assert main(["report", "--runs", str(sweep), "--out", str(other / "report.html")]) == 0
    assert main(["report", "--runs", str(sweep), "--out", str(tmp_path / "report.html")]) == 0
    [run] = find_runs([sweep])
    assert run.views == [] and run.others == ["sweep.toml", "trials/"]


def test_a_registry_entry_is_all_the_report_needs(tmp_path, monkeypatch):
    """One experiment declared in analyses.experiments (title, prediction, files, own captions, formatter) renders
    without touching the report; a file its entry says every run writes, when missing, refuses the run."""
    from analyses.experiments import KINDS, Experiment

    monkeypatch.setitem(KINDS, "toy-bridge", Experiment(
        "toy-bridge", ("reproduce", "toy-bridge"), "a toy", "json:dumps", ("train_prob",),
        title="A toy bridge", prediction="The toy predicts nothing.", files=("bridge.png",),
        captions={"bridge.png": "The own bridge figure of the toy.", "curves.png": "The curves of the toy."}))
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"experiment": "toy-bridge", "train_prob": 0.5}))
    with pytest.raises(ReportError, match=r"bridge.png missing \(every 'toy-bridge' run writes it\)"):
        find_runs([folder])
    for name in ("bridge.png", "curves.png", "heatmap.png"):
        matplotlib.image.imsave(folder / name, [[0.0, 1.0], [1.0, 0.0]])
    run, = find_runs([folder])
    assert [p.name for p in run.figures] == ["bridge.png", "curves.png", "heatmap.png"]  # declared files first
    page = render_report([run])
    for text in ("A toy bridge", "The toy predicts nothing.", "<pre>{&quot;experiment&quot;: &quot;toy-bridge&quot;", "The own bridge figure of the toy.", "The curves of the toy.",
                 "a bright diagonal for train-forward"):  # heatmap.png: the shared caption
        assert text in page, text
