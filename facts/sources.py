"""Your own facts, read one way by every command that takes ``--facts`` (``probe``, ``finetune-facts``).

:func:`read_fact_source` reads any of

* a folder in Berglund et al.'s experiment-1 layout (:func:`facts.berglund.load_experiment_folder`);
* a CSV of subject, relation, object (+ inverse_relation, group) (:func:`facts.questions.load_fact_csv`);
* the project's fact JSONL (:func:`facts.io.load_jsonl`, what ``revlens make-facts`` writes);

with sentence templates from a templates file (:func:`facts.questions.load_templates`) when one is
given. What it returns (:class:`FactSource`) serves both commands: ``finetune-facts`` asks for its
training pairs and questions (:meth:`FactSource.questions`), ``probe`` for a fact set and the
templates that turn its statements into prompts (:attr:`FactSource.facts`,
:attr:`FactSource.sentence_templates`). A Berglund folder states its facts as prompts; its
facts are those whose name and description both appear (:func:`facts.berglund.experiment_facts`).

Bad input raises :class:`facts.schema.FactError` naming the file (and line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from facts.questions import QuestionSet, Templates, load_fact_csv, load_templates, questions_from_facts
from facts.schema import FactError, FactSet


@dataclass(frozen=True)
class FactSource:
    """What a ``--facts`` path holds: ``facts`` (a fact set; for a Berglund folder, its facts with
    both entities named), ``templates`` ((train, test) from the templates file, or a Berglund
    folder's own sentences; None: the caller's defaults) and, for a Berglund folder, its
    ``experiment`` (the prompts and questions as published)."""

    path: Path
    facts: FactSet
    templates: tuple[Templates, Templates] | None = None
    experiment: QuestionSet | None = None

    def questions(self, train_templates: Mapping[str, Sequence[str]], test_templates: Mapping[str, Sequence[str]],
                  paraphrases: int | None) -> QuestionSet:
        """Training pairs and test questions (``finetune-facts``): a Berglund folder's own, else the facts
        in the templates file's sentences, or in the given defaults; the first ``paraphrases`` per fact."""
        if self.experiment is not None:  # its questions as published, and the facts they ask
            return replace(self.experiment, facts=self.facts, sentence_templates=self.templates[0])
        train, test = self.templates or (train_templates, test_templates)
        try:
            return questions_from_facts(self.facts, train, test, paraphrases)
        except FactError as error:
            if not error.facts:
                raise
            raise FactError(f"{self.where(error.facts[0])}: {error}", error.facts) from None

    def where(self, index: int) -> str:
        """``file:line`` of fact ``index`` (a Berglund folder: the folder)."""
        from facts.io import fact_line

        if self.path.is_dir():
            return str(self.path)
        lines = self.facts.meta.get("line") if self.path.suffix.lower() == ".csv" else None  # by fact
        return f"{self.path}:{lines[index]}" if isinstance(lines, list) else fact_line(self.path, index)

    def sentence_templates(self, default: Mapping[str, Sequence[str]] | None) -> Mapping[str, Sequence[str]] | None:
        """The templates ``probe`` renders the facts' statements with (their first per relation)."""
        return self.templates[0] if self.templates is not None else default


def read_fact_source(path: str | os.PathLike[str], templates_file: str | os.PathLike[str] | None = None,
                     paraphrases: int | None = None) -> FactSource:
    """Read ``path`` (a Berglund experiment-1 folder, a ``.csv`` or a fact JSONL) whole and check it.

    ``templates_file``: sentence templates for a CSV or JSONL (a Berglund folder brings its own
    sentences, so one given with it is refused). ``paraphrases``: a Berglund folder's training
    prompts kept per fact (the first N; all when None)."""
    from facts.berglund import experiment_facts, is_experiment_folder, load_experiment_folder
    from facts.io import load_jsonl

    path = Path(path)
    if is_experiment_folder(path):
        if templates_file is not None:
            raise FactError(f"{templates_file}: a Berglund folder brings its own prompts; no templates file")
        experiment = load_experiment_folder(path, paraphrases)
        facts, templates = experiment_facts(experiment)
        return FactSource(path, facts, (templates, {}), experiment)
    if path.is_dir():
        raise FactError(f"{path}: a folder without any of Berglund et al.'s experiment-1 files "
                        f"(e.g. p2d_prompts_train.jsonl)")
    facts = load_fact_csv(path) if path.suffix.lower() == ".csv" else load_jsonl(path)
    return FactSource(path, facts, None if templates_file is None else load_templates(templates_file))


__all__: Sequence[str] = ("FactSource", "read_fact_source")
