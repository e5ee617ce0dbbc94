"""Every catalogued bad input gets a clear error (or a negative info), and nothing unsafe runs."""
import os

import pytest

from linsolve._catalog import CASES, MARKER_NAME, run_case


def test_catalog_is_broad():
    assert len(CASES) >= 30
    areas = {case.area for case in CASES}
    assert {"cg", "dcdm", "sor", "solve", "SequenceSolver", "problems", "models.load", "CLI"} <= areas
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert not (tmp_path / MARKER_NAME).exists(), "loading a file executed code from it"
    if case.negative_info:
        assert outcome["outcome"] == "returned", outcome
        assert outcome["value"] < 0
    elif case.exit_code is not None:
        assert outcome["outcome"] == "exit", outcome
        assert outcome["code"] == case.exit_code
        assert outcome["message"], "the CLI must say what is wrong"
        assert len(outcome["message"].splitlines()) == 1
    else:
        assert outcome["outcome"] == "raised", outcome
        assert isinstance(outcome["exception"], case.error), outcome
        for word in case.words:
            assert word in outcome["message"], f"{word!r} not in {outcome['message']!r}"
        # No crash from deep inside numba/torch: the message is ours, not an internal traceback.
        assert "numba" not in outcome["message"].lower() or "linsolve" in outcome["message"].lower()


def test_error_catalog_doc_lists_every_case():
    doc = os.path.join(os.path.dirname(__file__), "..", "docs", "ERRORS.md")
    assert os.path.exists(doc), "run `python docs/make_error_catalog.py`"
    text = open(doc, encoding="utf-8").read()
    missing = [case.id for case in CASES if f"`{case.id}`" not in text]
    assert not missing, f"docs/ERRORS.md is stale; regenerate it (missing {missing})"
