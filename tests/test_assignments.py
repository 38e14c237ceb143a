"""The course assignments: built with otter-grader, the tests are real.

CI proof (issue 7): ``build`` produces student and autograder artefacts for all three
assignments; the built *solution* notebooks score full marks with otter's local runner,
and the unmodified *student* notebooks score zero on every graded question. Written
(manual) questions carry no tests and are left out of the scores.
"""

from __future__ import annotations

import json
import os
import zipfile

import pytest

pytest.importorskip("otter", reason="otter-grader (the 'assign' extra) is not installed")

from zoedu import assignments  # noqa: E402
from zoedu.assignments import ASSIGNMENTS, build, grade, grade_many  # noqa: E402

# Auto-graded questions per assignment; the manual (written) ones are listed apart.
GRADED = {
    "zeroth_order": {"q1_spsa", "q2_autograd", "q3_mezo", "q4_fit"},
    "mixing": {"q1_stats", "q2_pike", "q3_compare"},
    "privacy": {"q1_gaussian", "q2_accountant", "q3_estimators", "q4_mse", "q5_sweep"},
}
MANUAL = {"zeroth_order": "q5_memory", "mixing": "q4_conflict", "privacy": "q6_discussion"}

# Lines of each solution that must never reach the student notebook.
SOLUTION_LINES = {
    "zeroth_order": ["projected_grad = (float(f(x + eps * z)) - float(f(x - eps * z))) / (2 * eps)",
                     "perturb_parameters(params, seed, -2 * eps)",
                     "(autograd_grad,) = torch.autograd.grad"],
    "mixing": ["logw = np.log(w) + scores", "gram = G @ G.T",
               "hist_pike = fit(copy.deepcopy(model0)"],
    "privacy": ["log_s = brentq(excess", "b = n_priv * variance / (n_pub * noise_total + n * n_priv * variance)",
                "errors.append(float(((np.asarray(est) - mu) ** 2).sum()))"],
}
# Names of hidden tests, which only the autograder may hold.
HIDDEN_TESTS = {
    "zeroth_order": ["test_mezo_never_stores_z", "test_spsa_unbiased_on_quadratic"],
    "mixing": ["test_pike_matches_zoedu", "test_stats_match_zoedu"],
    "privacy": ["test_gaussian_sigma_is_tight", "test_semi_dp_never_worse"],
}


def _check_no_leaks(name, b):
    student = b.student.read_text(encoding="utf-8")
    solution = b.autograder_notebook.read_text(encoding="utf-8")
    for line in SOLUTION_LINES[name]:
        needle = json.dumps(line)[1:-1]  # as it appears inside the notebook's JSON strings
        assert needle in solution, f"{name}: solution line missing from the autograder notebook: {line}"
        assert needle not in student, f"{name}: solution leaked into the student notebook: {line}"
    with zipfile.ZipFile(b.autograder_zip) as zf:
        ag_tests = "".join(zf.read(f).decode() for f in zf.namelist() if f.startswith("tests/"))
    for test in HIDDEN_TESTS[name]:
        assert test in ag_tests, f"{name}: hidden test {test} is missing from the autograder zip"
        assert test not in student, f"{name}: hidden test {test} is in the student notebook"
    assert "BEGIN SOLUTION" not in student and "grader.check(" in student
    assert "...\\n" in student or '..."' in student, "placeholders replace the solutions"


def test_build_and_grade_all_assignments(tmp_path):
    """The CI proof, in one test so that pytest-xdist runs (and pays for) it once.

    Builds all three assignments, checks that no solution or hidden test reaches the
    student notebooks, then grades the six notebooks two at a time: every built solution
    scores full marks, every unmodified student notebook scores zero on each graded question.
    """
    built = build(tmp_path)
    assert list(built) == list(ASSIGNMENTS)
    for name, b in built.items():
        assert b.student.is_file() and b.autograder_notebook.is_file() and b.autograder_zip.is_file(), name
        assert b.student.parent.name == "student" and b.autograder_zip.parent.name == "autograder"
        _check_no_leaks(name, b)

    jobs = []
    for name in ASSIGNMENTS:
        jobs += [(built[name].autograder_notebook, built[name].autograder_zip),
                 (built[name].student, built[name].autograder_zip)]
    graded = grade_many(jobs, workers=2)
    for i, name in enumerate(ASSIGNMENTS):
        solution, student = graded[2 * i], graded[2 * i + 1]
        print(f"{name}: solution graded in {solution.seconds:.0f} s, student in {student.seconds:.0f} s")
        for report in (solution, student):
            assert set(report.possible) == GRADED[name], "graded questions (manual ones excluded)"
            assert MANUAL[name] not in report.possible
        assert solution.total == solution.total_possible > 0, f"{solution}\n{solution.failures}"
        assert all(score == 0 for score in student.scores.values()), str(student)
        assert all(student.failures.get(q) for q in GRADED[name]), "every graded question has failing tests"


# --------------------------------------------------------------------------- API and CLI
def test_bad_names_and_paths(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="allowed: zeroth_order, mixing, privacy"):
        build(tmp_path, names=["nope"])
    with pytest.raises(FileNotFoundError, match="source"):
        build(tmp_path, source=tmp_path / "missing")
    monkeypatch.setenv("ZOEDU_ASSIGNMENTS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="--source"):
        assignments.source_dir()
    with pytest.raises(FileNotFoundError, match="notebook="):
        grade(tmp_path / "x.ipynb", tmp_path / "a.zip")
    (tmp_path / "x.ipynb").write_text("{}")
    with pytest.raises(FileNotFoundError, match="autograder_zip="):
        grade(tmp_path / "x.ipynb", tmp_path / "a.zip")
    with pytest.raises(ValueError, match="workers"):
        grade_many([], workers=0)


def test_masters_are_in_the_checkout():
    root = assignments.source_dir()
    for rel in ASSIGNMENTS.values():
        assert (root / rel).is_file(), rel


def test_cli_registers_build_and_grade(tmp_path):
    from zoedu.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["assignments", "build", "--out", str(tmp_path), "--only", "privacy"])
    assert args.func is assignments._cmd_build and args.out == str(tmp_path) and args.names == ["privacy"]
    args = parser.parse_args(["assignments", "grade", "a.ipynb", "b.ipynb", "--autograder", "x.zip"])
    assert args.func is assignments._cmd_grade and args.submissions == ["a.ipynb", "b.ipynb"]
    with pytest.raises(SystemExit):
        parser.parse_args(["assignments", "build", "--only", "nope"])


def test_cli_build_one(tmp_path, capsys):
    from zoedu.cli import main

    assert main(["assignments", "build", "--out", str(tmp_path), "--only", "privacy"]) == 0
    out = capsys.readouterr().out
    assert "privacy:" in out and "student" in out
    assert (tmp_path / "privacy" / "student" / "privacy.ipynb").is_file()
    assert list((tmp_path / "privacy" / "autograder").glob("privacy-autograder_*.zip"))
    assert os.getcwd() != str(tmp_path / "privacy")  # otter's chdir does not leak
