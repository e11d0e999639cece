"""The README's table of what each model's template does with irregular conversations is current."""

from __future__ import annotations

from pathlib import Path

from tests.profiles_table import BEGIN, END, table

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_shows_what_check_profile_answers_today() -> None:
    text = README.read_text()
    assert BEGIN in text, "README lacks the profiles table's begin marker"
    assert END in text, "README lacks the profiles table's end marker"
    shown = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert shown == table(), "README's profiles table drifted: run `python -m tests.profiles_table`"
