"""Each benchmark graded by its official scorer's rule: one table per benchmark, drawn from what
that scorer does (the source is linked in the benchmark's entry), hard cases included.

Every table row is (the answer the model writes after its trace, the expected status); the item is
built from a row in the public dataset's own columns by the benchmark's ``to_item``, so the gold,
the options and the rule are the ones ``ovr-eval`` uses.
"""

from __future__ import annotations

import pytest

from ovr_core.grading import choice_letters, final_answer, grade_completion, number_of
from ovr_eval.benchmarks import BENCHMARKS, get_benchmark
from ovr_train.rl.rewards import REWARDS


def done(answer: str) -> str:
    return f"<think>\nLet me work it out.\n</think>\n\n{answer}"


def grade(bench: str, row: dict, answer: str, completion: str | None = None) -> str:
    item = get_benchmark(bench).to_item({"image": "img", **row}, 0, get_benchmark(bench).hub[2][0])
    return grade_completion(completion or done(answer), item.gold, item.choices, item.rule).status


C, W = "correct", "wrong"

# fmt: off
MATHVISTA_MC = {"pid": "1", "question": "Which bar is tallest?", "choices": ["3", "5", "7", "9"],
                "answer": "7", "question_type": "multi_choice", "answer_type": "text",
                "precision": None, "unit": None}
MATHVISTA_FLOAT2 = {"pid": "2", "question": "How much?", "choices": None, "answer": "1.45",
                    "question_type": "free_form", "answer_type": "float", "precision": 2}
MATHVISTA_FLOAT1 = {**MATHVISTA_FLOAT2, "answer": "0.6", "precision": 1}
MATHVISTA_INT = {**MATHVISTA_FLOAT2, "answer": "14", "answer_type": "integer", "precision": None}
MATHVISTA_LIST = {**MATHVISTA_FLOAT2, "answer": "[2007, 2008]", "answer_type": "list"}

TABLES = {
    # calculate_score.py: letter -> option text; int(float(x)); round(float(x), precision)
    "mathvista": [
        (MATHVISTA_MC, "\\boxed{C}", C), (MATHVISTA_MC, "\\boxed{(C) 7}", C),
        (MATHVISTA_MC, "\\boxed{7}", C), (MATHVISTA_MC, "\\boxed{\\text{C}}", C),
        (MATHVISTA_MC, "\\boxed{\\textbf{C}}", C), (MATHVISTA_MC, "\\boxed{C.}", C),
        (MATHVISTA_MC, "\\boxed{B}", W), (MATHVISTA_MC, "\\boxed{c}", W),
        (MATHVISTA_FLOAT2, "\\boxed{1.45}", C), (MATHVISTA_FLOAT2, "\\boxed{1.4523}", C),
        (MATHVISTA_FLOAT2, "\\boxed{1.449}", C), (MATHVISTA_FLOAT2, "\\boxed{1.45.}", C),
        (MATHVISTA_FLOAT2, "\\boxed{1.46}", W), (MATHVISTA_FLOAT1, "\\boxed{0.63}", C),
        (MATHVISTA_FLOAT1, "\\boxed{0.66}", W), (MATHVISTA_INT, "\\boxed{14}", C),
        (MATHVISTA_INT, "\\boxed{14.0}", C), (MATHVISTA_INT, "\\boxed{14.7}", C),  # int(float())
        (MATHVISTA_INT, "\\boxed{14 \\text{ cm}}", C), (MATHVISTA_INT, "\\boxed{15}", W),
        (MATHVISTA_LIST, "\\boxed{[2007, 2008]}", C), (MATHVISTA_LIST, "\\boxed{[2007,2008]}", C),
        (MATHVISTA_LIST, "\\boxed{[2008, 2007]}", W),
    ],
    # MATH-V evaluate.py / utils.py: letter or option value; strings, LaTeX, numbers to 2 decimals;
    # degree marks stripped
    "mathvision": [
        (MV_MC := {"id": "4", "question": "<image1>\nHow many?", "options": ["1", "2", "3", "4", "5"],
                   "answer": "D"}, "\\boxed{D}", C),
        (MV_MC, "\\boxed{4}", C), (MV_MC, "\\boxed{(D)}", C), (MV_MC, "\\boxed{E}", W),
        (MV_FREE := {"id": "5", "question": "Find x.", "options": [], "answer": "3.14"},
         "\\boxed{3.14159}", C),
        (MV_FREE, "\\boxed{\\pi}", C), (MV_FREE, "\\boxed{3.15}", W),
        (MV_DEG := {"id": "6", "question": "Angle?", "options": [], "answer": "30"},
         "\\boxed{30^\\circ}", C),
        (MV_DEG, "\\boxed{30°}", C), (MV_DEG, "\\boxed{30^{\\circ}.}", C), (MV_DEG, "\\boxed{60°}", W),
    ],
    # opensource_json_eval.py: |x - truth| <= 0.001 (π as pi); letters exact; truth in the text
    "dynamath": [
        (DM_F := {"id": "1", "question": "Slope?", "ground_truth": "1.732", "answer_type": "float"},
         "\\boxed{1.7325}", C),
        (DM_F, "\\boxed{\\sqrt{3}}", C), (DM_F, "\\boxed{1.734}", W),
        ({**DM_F, "ground_truth": "6.283"}, "\\boxed{2π}", C),
        ({**DM_F, "ground_truth": "6.283"}, "\\boxed{2\\pi}", C),
        (DM_MC := {"id": "2", "question": "Which?", "ground_truth": "B",
                   "answer_type": "multiple choice"}, "\\boxed{B}", C),
        # its scorer lower-cases both sides: "b" is B
        (DM_MC, "\\boxed{(B) 2}", C), (DM_MC, "\\boxed{b}", C), (DM_MC, "\\boxed{A}", W),
        (DM_T := {"id": "3", "question": "Is it?", "ground_truth": "Yes", "answer_type": "text"},
         "\\boxed{Yes}", C),
        (DM_T, "\\boxed{\\text{Yes, it is}}", C), (DM_T, "\\boxed{yes}", W),
    ],
    # accuracy.py: the option letter; options are the strings the row holds
    "wemath": [
        (WM := {"ID": "7", "key": "2steps_1", "question": "Area?", "answer": "C",
                "option": "A. 16cm²; B. 8cm²; C. 4cm²; D. 12cm²; E. No correct answer"},
         "\\boxed{C}", C),
        (WM, "\\boxed{4cm²}", C), (WM, "\\boxed{C. 4cm²}", C), (WM, "\\boxed{\\text{4cm²}}", C),
        (WM, "\\boxed{No correct answer}", W), (WM, "\\boxed{E}", W), (WM, "\\boxed{8cm²}", W),
    ],
    # the letters chosen must be exactly the answer's set
    "logicvista": [
        (LV := {"question_id": "1", "question": "Which two?", "answer": "A, C"}, "\\boxed{A, C}", C),
        (LV, "\\boxed{AC}", C), (LV, "\\boxed{A and C}", C), (LV, "\\boxed{C, A}", C),
        (LV, "\\boxed{(A), (C)}", C), (LV, "\\boxed{A}", W), (LV, "\\boxed{A, B, C}", W),
        ({**LV, "answer": "B"}, "\\boxed{B}", C), ({**LV, "answer": "B"}, "\\boxed{B, B}", C),
        ({**LV, "answer": "B"}, "\\boxed{B, D}", W),
    ],
    # evaluate.py parse_multi_choice_response: letter first, else the option's text
    "mmmu-pro": [
        (MP := {"id": "t1", "question": "Which shape?", "answer": "B",
                "options": "['Cannot be determined', 'A square', 'Both', 'Circle']"},
         "\\boxed{A square}", C),
        (MP, "\\boxed{B}", C), (MP, "\\boxed{(B) A square}", C), (MP, "\\boxed{Both}", W),
        ({**MP, "answer": "A"}, "\\boxed{Cannot be determined}", C),
        ({**MP, "answer": "D"}, "\\boxed{Circle}", C), ({**MP, "answer": "D"}, "\\boxed{C}", W),
    ],
    # simple-evals mmlu_eval.py: the gold letter, upper case
    "mmlu": [
        (ML := {"question": "2 + 3?", "subject": "math", "choices": ["4", "5", "6", "7"],
                "answer": 1}, "\\boxed{B}", C),
        (ML, "\\boxed{5}", C), (ML, "\\boxed{\\textbf{B}}", C), (ML, "\\boxed{Answer: B}", C),
        (ML, "\\boxed{\\mathrm{(B)}}", C), (ML, "\\boxed{b}", W), (ML, "\\boxed{A}", W),
    ],
    # TIGER-Lab evaluate: letters A-J, upper case
    "mmlu-pro": [
        (MLP := {"question_id": 1, "question": "Prime?", "answer": "C",
                 "options": ["4", "6", "7", "8", "9", "10", "12", "14", "15", "16"]},
         "\\boxed{C}", C),
        (MLP, "\\boxed{(C)}", C), (MLP, "\\boxed{7}", C), (MLP, "\\boxed{J}", W), (MLP, "\\boxed{c}", W),
        (MLP, "\\boxed{\\textbf{C}}", C), (MLP, "\\boxed{The answer is (C)}", C),
    ],
    # score_answer_s2.py without a judge: letters for options drawn in the image, math otherwise
    "mathverse": [
        (MVS := {"sample_index": "1", "problem_version": "Vision Only", "question": "",
                 "answer": "B", "question_type": "multi-choice"}, "\\boxed{B}", C),
        (MVS, "\\boxed{B: This is not a function}", C), (MVS, "\\boxed{A}", W),
        (MVF := {**MVS, "answer": "(-2,1]", "question_type": "free-form"}, "\\boxed{(-2, 1]}", C),
        (MVF, "\\boxed{(-2, 1)}", W), (MVS, "\\boxed{\\textbf{B}}", C), (MVF, "\\boxed{(-2, 1].}", C),
    ],
    # reasoning_utils.py rubric without GPT: same term (case, \text{}, order), numbers by value
    "charxiv": [
        (CX := {"reasoning_q": "Which model?", "reasoning_a": "Gaussian", "reasoning_a_type": 1},
         "\\boxed{gaussian}", C),
        (CX, "\\boxed{\\text{Gaussian}}", C), (CX, "\\boxed{Gaussian Process}", W),
        ({**CX, "reasoning_a": "ACC, F1"}, "\\boxed{F1, ACC}", C),
        ({**CX, "reasoning_a": "(b)", "reasoning_a_type": 2}, "\\boxed{b}", C),
        (CXN := {**CX, "reasoning_a": "0.01", "reasoning_a_type": 3}, "\\boxed{10^{-2}}", C),
        (CXN, "\\boxed{0.012}", W), ({**CXN, "reasoning_a": "1500"}, "\\boxed{1.5e3}", C),
    ],
    # lighteval / math-verify: the last box
    "math500": [
        (M5 := {"problem": "Half?", "answer": "\\frac{1}{2}", "unique_id": "1"}, "\\boxed{0.5}", C),
        (M5, "\\boxed{1}, no wait: \\boxed{\\frac12}", C),  # self-correction: the last box
        (M5, "\\fbox{\\frac{1}{2}}", C), (M5, "\\boxed{\\frac{1}{2}.}", C),
        (M5, "\\boxed{\\dfrac{1}{2}}", C), (M5, "\\boxed{0.5} or \\boxed{1}", W),
    ],
    "aime24": [
        (A := {"problem": "Find x.", "answer": "70", "id": 1}, "\\boxed{70}", C),
        (A, "\\boxed{070}", C), (A, "\\boxed{70.}", C), (A, "\\boxed{71}", W),
    ],
    "aime25": [
        (A5 := {"problem": "Find x.", "answer": "204", "id": "0"}, "\\boxed{204}", C),
        (A5, "\\boxed{204.}", C), (A5, "\\fbox{204}", C),
    ],
    "gpqa": [
        (GP := {"Question": "Which particle mediates the electromagnetic force?",
                "Correct Answer": "photon", "Incorrect Answer 1": "gluon",
                "Incorrect Answer 2": "W boson", "Incorrect Answer 3": "graviton"},
         "\\boxed{photon}", C),
        (GP, "\\boxed{\\text{photon}}", C), (GP, "\\boxed{gluon}", W), (GP, "\\boxed{photon.}", C),
    ],
}
# fmt: on

CASES = [
    (bench, row, answer, status) for bench, rows in TABLES.items() for row, answer, status in rows
]


def test_every_benchmark_has_a_table_and_an_official_source():
    assert set(TABLES) == set(BENCHMARKS)
    for b in BENCHMARKS.values():
        assert b.official and b.source.startswith("https://github.com/"), b.name


@pytest.mark.parametrize(("bench", "row", "answer", "status"), CASES)
def test_official_rule_tables(bench, row, answer, status):
    assert grade(bench, row, answer) == status


def test_gpqa_letter_follows_the_shuffle():
    item = get_benchmark("gpqa").to_item(TABLES["gpqa"][0][0], 0, "train")
    other = next(c for c in "ABCD" if c != item.gold)
    assert grade("gpqa", TABLES["gpqa"][0][0], f"\\boxed{{{item.gold}}}") == C
    assert grade("gpqa", TABLES["gpqa"][0][0], f"\\boxed{{{other}}}") == W


# --- the final answer: one extraction for eval and RL -----------------------------------------


@pytest.mark.parametrize(
    ("completion", "status"),
    [
        # the chat template opened <think>: only </think> is in the completion
        ("I try \\boxed{3}, check it, it fails.\n</think>\n\nSo \\boxed{4}.", C),
        ("I try \\boxed{4}, check it.\n</think>\n\nSo \\boxed{3}.", W),
        ("I try \\boxed{4} and stop.\n</think>\n\nFour.", "no_answer"),
        ("<think>\ntry \\boxed{4}\n</think>\n\n\\boxed{3} no: \\fbox{4}", C),
        ("<think>\nstill thinking about \\boxed{4}", "unclosed"),
        ("\\boxed{3}, or rather \\boxed{4}", C),  # no trace at all: the last box
    ],
)
def test_final_answer_extraction(completion, status):
    assert grade_completion(completion, "4").status == status


def test_final_answer_after_a_template_opened_trace():
    assert final_answer("reasoning \\boxed{1}\n</think>\n\nanswer") == (None, "answer")
    assert final_answer("<think>never closed") == ("unclosed", "")


@pytest.mark.parametrize(
    ("text", "choices", "letters"),
    [
        ("A triangle", ["A triangle", "A square"], "A"),
        ("A square", ["A triangle", "A square"], "B"),
        ("B", ["A triangle", "A square"], "B"),
        ("\\textbf{(B)} A square", ["A triangle", "A square"], "B"),
        ("A, C", list("ABCDE"), "AC"),
        ("A & D", list("ABCDE"), "AD"),
        ("a", ["a", "b"], "A"),  # an option whose text is a lower-case letter matches as text
        ("b", ["x", "y"], ""),  # a lower-case letter is not an option letter
        ("Z", ["1", "2"], ""),
        ("0.5", ["$\\frac{1}{2}$", "3"], "A"),
    ],
)
def test_choice_letters(text, choices, letters):
    assert "".join(sorted(choice_letters(text, choices))) == letters


@pytest.mark.parametrize(
    ("text", "value"),
    [("1,234", 1234.0), ("12.5 cm", 12.5), ("50\\%", 50.0), ("\\frac{1}{2}", 0.5), ("x+1", None)],
)
def test_number_of(text, value):
    assert number_of(text) == value


def test_accuracy_reward_reads_a_rule_column_and_template_opened_traces():
    completions = [
        "2 + 2 \\boxed{5}? no.\n</think>\n\n\\boxed{4}",
        "<think>ok</think> \\boxed{1.4523}",
        "<think>ok</think> \\boxed{A, C}",
    ]
    out = REWARDS["accuracy"](
        completions,
        answer=["4", "1.45", "C, A"],
        choices=[None, None, list("ABCDE")],
        rule=[None, {"name": "mathvista", "answer_type": "float", "precision": 2}, None],
    )
    assert out == [1.0, 1.0, 1.0]
