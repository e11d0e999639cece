"""The README's table of job error codes, made from `service.jobs.ErrorCode` (its one owner).

python -m tests.job_errors_table   # prints the table to paste between the markers
"""

from __future__ import annotations

from service.jobs import ErrorCode

BEGIN = "<!-- job-error-codes: begin (python -m tests.job_errors_table) -->"
END = "<!-- job-error-codes: end -->"


def table() -> str:
    rows = [f"| `{code.value}` | {code.doc} |" for code in ErrorCode]
    return "\n".join([BEGIN, "| code | when |", "| --- | --- |", *rows, END])


if __name__ == "__main__":
    print(table())
