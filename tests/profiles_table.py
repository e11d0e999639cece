"""The README's "what happens to my irregular conversations" table, from `check_profile`.

Run `python -m tests.profiles_table` to print it; `tests/unit/test_readme_tables.py`
fails when the README's copy drifts from what the code answers today. Cells name the outcome
(rendered / rejected / rewritten) and the findings that are not about the whole template (every
Llama 3.1 row injects its date header; that is said once, under the table).
"""

from __future__ import annotations

from service.core.profiles import check_profile
from tests import profile_refs

BEGIN = "<!-- profiles-table:begin -->"
END = "<!-- profiles-table:end -->"

_SHORT = {
    "template_rejects_conversation": "",
    "template_rewrites_history": "",
    "template_drops_content": "drops content",
    "template_injects_text": "injects text",
    "eot_not_trained": "end-of-turn untrained",
    "mask_sources_disagree": "masks disagree",
}


def table() -> str:
    fams = profile_refs.families()
    keys = list(profile_refs.FAMILY_KEYS)
    rows: dict[str, dict[str, str]] = {}
    everywhere: dict[str, set[str]] = {}
    results = {key: check_profile(profile_refs.profile(key)) for key in keys}
    for key, checked in results.items():
        codes_per_case = [{f.code for f in row.findings} for row in checked]
        everywhere[key] = set.intersection(*codes_per_case) if codes_per_case else set()
    for key, checked in results.items():
        for row in checked:
            codes = sorted({f.code for f in row.findings} - everywhere[key])
            notes = [_SHORT.get(c, c) for c in codes if _SHORT.get(c, c)]
            cell = row.outcome + (f" ({', '.join(notes)})" if notes else "")
            rows.setdefault(row.case, {})[key] = cell
    head = "| case | " + " | ".join(fams[k].label for k in keys) + " |"
    rule = "| --- |" + " --- |" * len(keys)
    body = [f"| {case} | " + " | ".join(cells[k] for k in keys) + " |" for case, cells in rows.items()]
    always = [
        f"{fams[k].label}: every case {', '.join(sorted(_SHORT.get(c, c) or c for c in codes))}"
        for k, codes in everywhere.items()
        if codes
    ]
    foot = ["", "Found on every case, so left out of the cells: " + "; ".join(always) + "."] if always else []
    return "\n".join([BEGIN, head, rule, *body, *foot, END])


if __name__ == "__main__":
    print(table())
