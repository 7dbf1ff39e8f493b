"""Every notebook runs top to bottom, offline, on this interpreter, and shows what its text claims."""

import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient


ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "reversal-lens-tests"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
CLAIMS = {
    # trained statements learnt (p > 0.99, rank 1); the held-out ones at or below chance, none answered
    "01_reversal_curse_in_five_minutes": (2, """
trained, heldout = table[table.trained], table[table.split == "heldout"]
assert trained.prob.mean() > 0.99 and (trained["rank"] == 1).all(), trained.describe()
assert heldout.correct.sum() == 0 and heldout.logprob.mean() <= heldout.chance_logprob.iloc[0], heldout.describe()
"""),
    # Θ and every head's Y: the trained direction stands out, its reverse does not; the direct path and the QK
    # circuits carry no asymmetry; the one fact shown: every head's Y[A, B] several standard deviations up
    "02_reading_the_ov_circuit": (1, """
assert all(r["asymmetry"] > 2 and abs(r["z_heldout"]) < 0.5 for r in theta_rows + ov_rows), theta_rows
assert all(abs(r["asymmetry"]) < 1 for r in transformer_rows if r["circuit"] == "direct" or
           r["circuit"].startswith("qk")), transformer_rows
shown = circuits[(circuits.fact == fact) & (circuits.circuit == "ov")]
assert (shown.z_ab > 2).all() and (shown.z_ba.abs() < 2).all(), shown
"""),
    # the converted model and the bridge over a saved folder are the Hugging Face model (1e-5 to 1e-4 in
    # float32); both directions asked
    "03_checking_your_own_hf_model": (1, """
assert check_equivalence(model, hf_model, prompts, tokenizer) < 1e-4
assert type(own).__name__ == "TransformerBridge" and check_equivalence(own, hf_model, prompts, tokenizer) < 1e-4
assert all(summary["directions"][key]["n"] > 0 for key in ("child_to_parent", "parent_to_child")), summary
"""),
}


def test_the_three_walkthroughs_are_there_without_outputs():
    assert {path.stem for path in NOTEBOOKS} >= set(CLAIMS)
    for path in NOTEBOOKS:
        code = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code), f"{path.name} has outputs"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel spec that starts this interpreter (the venv's): the spec ipykernel installs runs
    whatever ``python`` is first on PATH."""
    folder = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(folder / "kernels" / KERNEL)
    return folder


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_and_shows_what_it_says(path, kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel))
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(path, as_version=4)
    figures, claim = CLAIMS.get(path.stem, (0, ""))
    # the kernel's objects frozen last: its exit then skips ~2.5 s of garbage collection over the modules the
    # notebook imported (measured 2.4-3.0 s from the last cell to the end of execute(), 0.3-0.5 s frozen)
    notebook.cells.append(nbformat.v4.new_code_cell(f"{claim}\nimport sys\nprint(sys.executable)\n"
                                                    "import gc\ngc.freeze()"))
    NotebookClient(notebook, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert outputs[-1].text.strip() == sys.executable
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= figures
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working folder
