"""The README lists every job error code a job can end with, as `ErrorCode` documents it."""

from __future__ import annotations

from pathlib import Path

from tests.job_errors_table import BEGIN, END, table

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_lists_the_job_error_codes_of_today() -> None:
    text = README.read_text()
    assert BEGIN in text, "README lacks the job error codes' begin marker"
    assert END in text, "README lacks the job error codes' end marker"
    shown = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert shown == table(), "README's job error codes drifted: run `python -m tests.job_errors_table`"
