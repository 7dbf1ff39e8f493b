"""The README's Python example runs as written and shows what the README says it shows."""

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_example_runs():
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    # run here, in a namespace of its own (every name it uses must be imported by the example itself),
    # not in a fresh interpreter: that would cost ~6 CPU s of torch and TransformerLens imports
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, str(ROOT / "README.md"), "exec"), {"__name__": "__main__"})
    means = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in stdout.getvalue().splitlines()[1:]}
    assert means["train"][0] > 0.99 and means["train"][2] == 1.0
    assert means["heldout"][2] == 0.0


def test_the_architecture_table_names_tests_that_exist():
    """Every `file.py` and `file.py::test` the table of docs/ARCHITECTURE.md names is in tests/ (a trailing `*`:
    a prefix), and every `::test` named alone is in one of those files."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = doc[doc.index("## Which commands work on which model"):]
    named = re.findall(r"`([\w/]+\.py)(?:::(\w+\*?))?`", table)
    assert len(named) >= 15
    for file, test in named:
        source = (ROOT / "tests" / file).read_text()
        if test:
            pattern = rf"^def {test[:-1]}\w*\(" if test.endswith("*") else rf"^def {test}\("
            assert re.search(pattern, source, re.M), f"{file}::{test} is not a test"
    for test in re.findall(r"`::(\w+)`", table):
        assert any(re.search(rf"^def {test}\(", (ROOT / "tests" / f).read_text(), re.M) for f, _ in named), test
