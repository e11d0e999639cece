"""The README's generated tables are current: what each model's template does with irregular
conversations (`tests.profiles_table`) and the job error codes (`tests.job_errors_table`)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests import job_errors_table, profiles_table

README = Path(__file__).parents[2] / "README.md"


@pytest.mark.parametrize("source", [profiles_table, job_errors_table], ids=lambda m: m.__name__)
def test_the_readme_shows_the_table_of_today(source: ModuleType) -> None:
    text = README.read_text()
    assert source.BEGIN in text, f"README lacks {source.__name__}'s begin marker"
    assert source.END in text, f"README lacks {source.__name__}'s end marker"
    shown = text[text.index(source.BEGIN) : text.index(source.END) + len(source.END)]
    assert shown == source.table(), f"README's table drifted: run `python -m {source.__name__}`"
