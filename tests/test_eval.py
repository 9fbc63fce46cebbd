"""ovr-eval without a server: each benchmark's rows as the public datasets lay them out, local
loading and its errors, the completion rebuilt from the wire split, report scoring, the CLI."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from ovr_core.grading import grade_completion
from ovr_eval.benchmarks import BENCHMARKS, LETTERS, DatasetError, get_benchmark
from ovr_eval.cli import main
from ovr_eval.loading import hub_reachable, image_data_url, load_items
from ovr_eval.report import Run, comparison_rows, score_records, wilson
from ovr_eval.run import join_completion
from tests.conftest import free_port


def png_bytes(color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def pil_image():
    return Image.new("RGB", (8, 8), "blue")


# one realistic row per benchmark, in its public dataset's columns (extra columns included, as the
# hub ships them), and what the item must hold: (gold, choices or None, number of images, prompt bits)
# fmt: off
ROWS = {
    "aime24": (
        {"id": 60, "problem": "Find $x$ if $2^x = 1024$.", "solution": "...", "answer": "10",
         "url": "https://artofproblemsolving.com/...", "year": "2024"},
        "10", None, 0, ["2^x = 1024", "\\boxed{}"],
    ),
    "aime25": (
        {"problem": "Find the sum of all bases $b > 9$ ...", "answer": "70", "id": "0"},
        "70", None, 0, ["bases $b > 9$"],
    ),
    "math500": (
        {"problem": "What is $1+1$?", "solution": "$1+1=2$.", "answer": "2",
         "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
        "2", None, 0, ["What is $1+1$?"],
    ),
    "gpqa": (
        {"Question": "Which particle mediates the electromagnetic force?",
         "Correct Answer": "photon", "Incorrect Answer 1": "gluon",
         "Incorrect Answer 2": "W boson", "Incorrect Answer 3": "graviton",
         "Record ID": "recABC", "Explanation": "...", "Subdomain": "Physics"},
        None, ["photon", "gluon", "W boson", "graviton"], 0, ["electromagnetic force"],
    ),
    "mmlu": (
        {"question": "What is 2 + 3?", "subject": "elementary_mathematics",
         "choices": ["4", "5", "6", "7"], "answer": 1},
        "B", ["4", "5", "6", "7"], 0, ["(B) 5"],
    ),
    "mmlu-pro": (
        {"question_id": 70, "question": "Which is prime?",
         "options": ["4", "6", "7", "8", "9", "10", "12", "14", "15", "16"],
         "answer": "C", "answer_index": 2, "cot_content": "", "category": "math", "src": "ori"},
        "C", ["4", "6", "7", "8", "9", "10", "12", "14", "15", "16"], 0, ["(J) 16"],
    ),
    "mathvista": (
        {"pid": "1", "question": "What is the value of the bar labelled 'b'?",
         "image": "images/1.jpg", "decoded_image": "PIL", "choices": ["3", "5", "7", "9"],
         "unit": "cm", "precision": None, "answer": "7", "question_type": "multi_choice",
         "answer_type": "text", "metadata": {"source": "FigureQA"}, "query": "..."},
        "C", ["3", "5", "7", "9"], 1, ["(Unit: cm)", "(C) 7"],
    ),
    "mathvision": (
        {"id": "4", "question": "<image1>\nHow many triangles are there?",
         "options": ["1", "2", "3", "4", "5"], "image": "images/4.jpg", "decoded_image": "PIL",
         "answer": "D", "solution": None, "level": 2, "subject": "counting"},
        "D", ["1", "2", "3", "4", "5"], 1, ["How many triangles"],
    ),
    "mathverse": (
        {"sample_index": "1", "problem_index": "1", "problem_version": "Vision Only",
         "question": "", "image": "PIL", "answer": "B", "question_type": "multi-choice",
         "metadata": {}, "query_wo": "...", "query_cot": "...", "question_for_eval": "..."},
        "B", list("ABCDE"), 1, ["shown in the image", "letter of the correct option"],
    ),
    "dynamath": (
        {"id": "12", "question": "What is the slope of the line? Choices: (A) 1 (B) 2",
         "image": "PIL", "ground_truth": "A", "answer_type": "multiple choice",
         "subject": "analytic geometry", "knowledge_level": "high school"},
        "A", list("ABCDE"), 1, ["slope of the line"],
    ),
    "wemath": (
        {"ID": "1", "split": "testmini", "knowledge concept": "area",
         "question": "What is the area of the square?", "option": "A. 4; B. 8; C. 16",
         "answer": "A", "image_path": "PIL", "key": "2steps_1", "question number": 1},
        "A", ["4", "8", "16"], 1, ["Options: A. 4; B. 8; C. 16"],
    ),
    "logicvista": (
        {"question_id": "7", "question": "Which shape comes next? A) ... B) ...",
         "image": "PIL", "answer": "B", "skill": ["inductive"]},
        "B", list("ABCDE"), 1, ["Which shape comes next"],
    ),
    "mmmu-pro": (
        {"id": "test_Math_1", "question": "<image 1> What is the area of the shaded part?",
         "options": "['2', '4', '6', '8', '10', '12', '14', '16', '18', '20']",
         "explanation": "", "image_1": "PIL", "image_2": "PIL", "image_3": None,
         "image_4": None, "image_5": None, "image_6": None, "image_7": None,
         "img_type": "['Diagrams']", "answer": "B", "topic_difficulty": "Medium",
         "subject": "Math"},
        "B", ["2", "4", "6", "8", "10", "12", "14", "16", "18", "20"], 2, ["[image] What is"],
    ),
    "charxiv": (
        {"image": "PIL", "category": "line", "grading_query": "...",
         "reasoning_q": "Which year has the highest value?", "reasoning_a": "2019",
         "reasoning_q_source": 1, "reasoning_a_type": 3, "descriptive_q1": 1},
        "2019", None, 1, ["highest value"],
    ),
}
# fmt: on


def _realise(row: dict) -> dict:
    return {k: (pil_image() if v == "PIL" else v) for k, v in row.items()}


def test_every_registered_benchmark_has_a_realistic_row():
    assert set(ROWS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", list(ROWS))
def test_to_item_reads_the_public_row_layout(name):
    row, gold, choices, n_images, in_prompt = ROWS[name]
    bench = get_benchmark(name)
    row = _realise(row)
    assert not [k for k in bench.required if k not in row]
    item = bench.to_item(row, 0, bench.hub[2][0])
    assert item is not None and item.id
    if gold is not None:
        assert item.gold == gold
    if name == "gpqa":  # its options are shuffled: the same four, in a fixed order
        assert sorted(item.choices) == sorted(choices)
    else:
        assert item.choices == choices
    assert len(item.images) == n_images
    for text in in_prompt:
        assert text in item.prompt, (text, item.prompt)
    assert "\\boxed{}" in item.prompt and "<image" not in item.prompt
    if choices:  # the gold letter names an option, and a model boxing it is graded correct
        assert item.gold in LETTERS[: len(choices)]
        completion = f"<think>\nok\n</think>\n\n\\boxed{{{item.gold}}}"
        assert grade_completion(completion, item.gold, item.choices).status == "correct"


def test_gpqa_shuffles_its_options_and_the_gold_letter_follows_the_correct_answer():
    row = ROWS["gpqa"][0]
    item = get_benchmark("gpqa").to_item(row, 0, "train")
    assert item.choices[LETTERS.index(item.gold)] == "photon"
    assert item.choices != ROWS["gpqa"][2] or item.gold == "A"
    assert get_benchmark("gpqa").to_item(row, 0, "train") == item, "the shuffle is fixed"


def test_mathvista_free_form_asks_for_a_boxed_answer():
    row = {**_realise(ROWS["mathvista"][0]), "question_type": "free_form", "choices": None}
    item = get_benchmark("mathvista").to_item(row, 0, "testmini")
    assert item.choices is None and item.gold == "7" and "\\boxed{}" in item.prompt


def test_mathverse_asks_only_the_vision_only_version():
    row = {**_realise(ROWS["mathverse"][0]), "problem_version": "Text Dominant"}
    assert get_benchmark("mathverse").to_item(row, 0, "testmini") is None


def test_dynamath_variants_share_their_seed_questions_group():
    bench = get_benchmark("dynamath")
    row = _realise(ROWS["dynamath"][0])
    a = bench.to_item(row, 0, "sample_variant1")
    b = bench.to_item(row, 0, "sample_variant2")
    assert a.group == b.group == "12" and a.id != b.id


# --- loading local copies ------------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_load_items_from_a_jsonl_file_with_relative_image_paths(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.png").write_bytes(png_bytes())
    row = {**ROWS["mathvista"][0], "decoded_image": None, "image": "images/1.png"}
    _write_jsonl(tmp_path / "testmini.jsonl", [row, {**row, "pid": "2"}])
    items = load_items(get_benchmark("mathvista"), tmp_path / "testmini.jsonl")
    assert [it.id for it in items] == ["1", "2"]
    assert items[0].images == [image_data_url(png_bytes(), None)]
    assert items[0].images[0].startswith("data:image/png;base64,")


def test_load_items_from_a_json_list_and_limit(tmp_path):
    rows = [{**ROWS["math500"][0], "unique_id": f"q{i}"} for i in range(5)]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    items = load_items(get_benchmark("math500"), tmp_path / "test.json", limit=3)
    assert [it.id for it in items] == ["q0", "q1", "q2"]


def test_load_items_from_a_hub_style_folder_of_parquet_with_image_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    row = {**ROWS["mathvision"][0], "decoded_image": {"bytes": png_bytes(), "path": "4.png"}}
    row["image"] = "images/4.jpg"  # the path column of the release; decoded_image holds the bytes
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "data" / "test-00000.parquet")
    (item,) = load_items(get_benchmark("mathvision"), tmp_path)
    assert item.gold == "D" and item.images[0] == image_data_url(png_bytes(), None)


def test_load_items_from_a_folder_reads_every_split_file(tmp_path):
    row = ROWS["dynamath"][0]
    img = base64.b64encode(png_bytes()).decode()
    for split in ("sample_variant1", "sample_variant2"):
        _write_jsonl(
            tmp_path / f"{split}.jsonl", [{**row, "image": f"data:image/png;base64,{img}"}]
        )
    items = load_items(get_benchmark("dynamath"), tmp_path)
    assert [it.id for it in items] == ["sample_variant1-12", "sample_variant2-12"]
    assert {it.group for it in items} == {"12"}


def test_image_data_url_reads_pil_bytes_and_jpeg(tmp_path):
    assert image_data_url(pil_image(), None).startswith("data:image/png;base64,")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="JPEG")
    assert image_data_url({"bytes": buf.getvalue()}, None).startswith("data:image/jpeg;base64,")
    with pytest.raises(DatasetError, match="image not found"):
        image_data_url("images/missing.png", tmp_path)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_items(get_benchmark("math500"), tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match=r"no \.jsonl/\.json/\.parquet file"):
        load_items(get_benchmark("math500"), tmp_path)


def test_malformed_jsonl_names_the_file_and_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(ROWS["math500"][0]) + "\n\n{not json\n")
    with pytest.raises(DatasetError, match=r"test\.jsonl:3: not a JSON object"):
        load_items(get_benchmark("math500"), path)
    path.write_text('["a list"]\n')
    with pytest.raises(DatasetError, match=r"test\.jsonl:1: expected a JSON object"):
        load_items(get_benchmark("math500"), path)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="expected a list of objects"):
        load_items(get_benchmark("math500"), bad)
    bad.write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_items(get_benchmark("math500"), bad)
    broken = tmp_path / "test.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="not a readable parquet file"):
        load_items(get_benchmark("math500"), broken)


def test_missing_columns_name_the_row_and_what_is_needed(tmp_path):
    path = tmp_path / "test.jsonl"
    _write_jsonl(path, [ROWS["math500"][0], {"question": "What is 1+1?", "answer": "2"}])
    with pytest.raises(DatasetError, match=r"row 1 lacks \['problem'\]; a MATH500 row needs"):
        load_items(get_benchmark("math500"), path)


def test_duplicate_ids_are_an_error(tmp_path):
    path = tmp_path / "test.jsonl"
    _write_jsonl(path, [ROWS["math500"][0]] * 2)
    with pytest.raises(DatasetError, match="duplicate question ids"):
        load_items(get_benchmark("math500"), path)


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(DatasetError, match="unknown benchmark 'mathvistaa'; known: aime24"):
        get_benchmark("mathvistaa")


def test_unreachable_hub_without_a_local_copy_fails_fast_and_says_what_to_do(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    assert hub_reachable(timeout=2) is False
    with pytest.raises(DatasetError, match=r"hub is unreachable.*--data math500=PATH"):
        load_items(get_benchmark("math500"))
    assert time.monotonic() - start < 10


# --- the completion and the report ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reasoning", "answer", "completion", "status"),
    [
        ("2+2=4", "\\boxed{4}", "<think>2+2=4</think>\n\n\\boxed{4}", "correct"),
        (None, "<think>2+2=4</think> \\boxed{4}", "<think>2+2=4</think> \\boxed{4}", "correct"),
        (None, "\\boxed{4}", "\\boxed{4}", "correct"),  # no reasoning parser, no trace
        ("2+2 is", "", "<think>2+2 is", "unclosed"),  # cut off inside the trace
        ("2+2 is", "  ", "<think>2+2 is", "unclosed"),
        ("2+2=4", "four", "<think>2+2=4</think>\n\nfour", "no_answer"),
    ],
)
def test_join_completion_rebuilds_the_ovr_format(reasoning, answer, completion, status):
    joined = join_completion(reasoning, answer, "stop")
    assert joined == completion
    assert grade_completion(joined, "4").status == status


def test_wilson_interval_matches_known_values():
    assert wilson(0, 0) == (0.0, 0.0)
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def _record(i, correct, tokens=10, group=None, truncated=False, status=None):
    status = status or ("correct" if correct else "wrong")
    return {
        "id": str(i),
        "group": group,
        "correct": correct,
        "completion_tokens": tokens,
        "truncated": truncated,
        "status": status,
    }


def test_dynamath_worst_counts_a_seed_question_only_when_every_variant_is_right():
    records = [
        _record("v1-1", True, group="1"),
        _record("v2-1", True, group="1"),
        _record("v1-2", True, group="2"),
        _record("v2-2", False, group="2"),
        _record("v1-3", False, group="3"),
        _record("v2-3", False, group="3"),
    ]
    s = score_records("dynamath", records)
    assert (s.n, s.correct) == (3, 1)
    assert (s.low, s.high) == wilson(1, 3)
    assert score_records("mathvista", records).n == 6  # a per-question benchmark: no groups


def test_scores_length_statistics_truncation_and_no_answer_rates():
    records = [_record(i, i < 7, tokens=10 * (i + 1)) for i in range(10)]
    records[9].update(truncated=True, status="unclosed")
    records[8].update(status="no_answer")
    records[7].update(status="timeout")
    s = score_records("math500", records)
    assert (s.n, s.correct, s.accuracy) == (10, 7, 0.7)
    assert s.mean_tokens == 55 and s.median_tokens == 55
    assert s.p90_tokens == 90 and s.max_tokens == 100  # nearest-rank p90
    assert s.truncation == 0.1 and s.no_answer == 0.1 and s.timeouts == 1


def test_comparison_rows_put_the_papers_numbers_beside_ours(tmp_path):
    s = score_records("mathvista", [_record(i, i < 3) for i in range(4)])
    header, rows = comparison_rows([Run("tiny", tmp_path, {"mathvista": s})])
    assert header == [
        "Benchmark",
        "Qwen2.5-VL-7B (paper)",
        "OVR-7B-ColdStart (paper)",
        "OVR-7B-RL (paper)",
        "tiny",
    ]
    # each number carries the scorer that produced it (records without one: the default rules)
    assert rows == [
        ["MathVista (testmini)", "69.2", "—", "72.1", "75.0 [30.1, 95.4] · rules:default"]
    ]


# --- the command line ----------------------------------------------------------------------------


def test_list_prints_every_benchmark_with_its_dataset_and_paper_numbers(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(BENCHMARKS)
    assert lines[0].startswith("aime24")
    vista = next(line for line in lines if line.startswith("mathvista "))
    assert "AI4Math/MathVista" in vista and "testmini" in vista
    assert "OVR-7B-RL 72.1" in vista and "Qwen2.5-VL-7B 69.2" in vista


def test_run_against_an_unreachable_endpoint_exits_2_with_one_line(tmp_path, capsys):
    from ovr_eval.samples import write_sample_benchmarks

    data = write_sample_benchmarks(tmp_path / "b", n=1)
    url = f"http://127.0.0.1:{free_port()}/v1"
    code = main(
        [
            "run",
            "--endpoint",
            url,
            "--model",
            "m",
            "--bench",
            "math500",
            "--data",
            f"math500={data['math500']}",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ovr-eval: error: cannot reach") and "Is the server running?" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "r").exists(), "nothing written before the endpoint answers"


def test_cli_dataset_errors_exit_2(tmp_path, capsys):
    base = ["run", "--endpoint", "http://127.0.0.1:1/v1", "--model", "m", "--out", str(tmp_path)]
    assert main([*base, "--bench", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main([*base, "--bench", "math500", "--data", f"math500={tmp_path}/x.jsonl"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main([*base, "--bench", "math500", "--data", "math500"]) == 2
    assert "--data expects BENCH=PATH" in capsys.readouterr().err


def test_behaviours_with_rules_writes_rates_and_with_an_unreachable_judge_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    traces = ["Wait, no. Let me verify: 4.", "Let me look at the image again."]
    _write_jsonl(
        run / "mathvista.jsonl",
        [{"id": str(i), "reasoning": t, "completion": t} for i, t in enumerate(traces)],
    )
    assert main(["behaviours", str(run)]) == 0
    out = capsys.readouterr().out
    assert "backtracking (linguistic)" in out and "[bold" not in out
    rates = json.loads((run / "behaviours.json").read_text())["mathvista"]["rates"]
    assert rates["backtracking"] == rates["verification"] == rates["visual_reflection"] == 0.5
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["behaviours", str(run), "--judge-endpoint", url]) == 2
    assert capsys.readouterr().err.startswith("ovr-eval: error: cannot reach")
    assert main(["behaviours", str(tmp_path / "none")]) == 2


# --- the model-judge scorers (plumbing against a real endpoint: test_eval_live.py) -------------


def test_judge_reply_parsers_read_the_official_formats_and_refuse_the_rest():
    from ovr_eval.judge import parse_charxiv, parse_extraction, parse_judgement

    assert parse_judgement("1") == 1 and parse_judgement("Judgement: 0") == 0
    assert parse_judgement("The answers agree.") is None and parse_judgement("") is None
    reply = 'Sure. {"extracted_answer": "P55762", "score": 0}'
    assert parse_charxiv(reply) == {"extracted_answer": "P55762", "score": 0}
    assert parse_charxiv('{"extracted_answer": "x", "score": 7}') is None
    assert parse_charxiv("no json here") is None
    assert parse_extraction("Extracted answer: 14") == "14" and parse_extraction("  ") is None


def test_judge_prompts_are_the_official_ones_filled_in():
    from ovr_eval.judge import PROTOCOLS

    record = {
        "gold": "B",
        "prompt": "ours",
        "choices": ["3", "5"],
        "meta": {"question": "Which is prime?", "inst_category": 3},
        "rule": {"name": "mathvista", "answer_type": "text"},
    }
    (extract, score), _ = PROTOCOLS["mathverse"]
    assert "termed 'Model Response'" in extract(record, "so B")
    assert extract(record, "so B").endswith("Model response: 'so B'\nExtracted Answer: ")
    scored = score(record, "B")
    assert "[Question]: Which is prime?\n[Standard Answer]: B\n[Model_answer] : B" in scored
    ((charxiv,), _) = PROTOCOLS["charxiv"]
    prompt = charxiv(record, "It is 5.")
    assert "exactly equal in values" in prompt and "* Response: It is 5." in prompt
    assert "* Ground Truth: B" in prompt and "<|" not in prompt
    ((vista,), _) = PROTOCOLS["mathvista"]
    prompt = vista(record, "The answer is 5.")
    assert prompt.startswith("Please read the following example.")
    assert "Question: Which is prime?\nChoices:\n(A) 3\n(B) 5" in prompt
    assert prompt.endswith("The answer is 5.\n\nExtracted answer: ")


@pytest.mark.parametrize(
    ("extraction", "rule", "choices", "gold", "expected"),
    [
        ("B", {}, ["3", "5"], "B", True),
        ("(b) 5", {}, ["3", "5"], "B", True),  # MathVista reads "(b)" as B
        ("five", {}, ["3", "five!"], "B", True),  # else the most similar option
        ("14.7", {"answer_type": "integer"}, None, "14", True),  # int(float(x))
        ("1.4523", {"answer_type": "float", "precision": 2}, None, "1.45", True),
        ("1.46", {"answer_type": "float", "precision": 2}, None, "1.45", False),
        ("about", {"answer_type": "float", "precision": 2}, None, "1.45", False),
    ],
)
def test_mathvista_judge_extraction_is_normalised_as_mathvista_does(
    extraction, rule, choices, gold, expected
):
    from ovr_eval.judge import PROTOCOLS

    record = {"gold": gold, "choices": choices, "rule": {"name": "mathvista", **rule}}
    assert PROTOCOLS["mathvista"][1](record, extraction) is expected


# --- WeMath's own metrics and the scorer in the report --------------------------------------------


def _wemath(problem, key, correct):
    steps = key.split("_")[0]
    return {
        "id": f"{problem}-{key}",
        "group": f"{steps}-{problem}",
        "meta": {"key": key},
        "correct": correct,
        "status": "correct" if correct else "wrong",
        "completion_tokens": 5,
        "scorer": "rules:choice",
    }


def test_wemath_reports_its_four_dimensional_strict_and_loose_scores(tmp_path):
    from ovr_eval.report import wemath_scores

    records = [
        *(_wemath("1", k, True) for k in ("2steps_1", "2steps_2", "2steps_multi")),  # CM
        *(
            _wemath("2", k, c)
            for k, c in (("2steps_1", True), ("2steps_2", True), ("2steps_multi", False))
        ),  # IG
        *(
            _wemath("3", k, c)
            for k, c in (("2steps_1", False), ("2steps_2", True), ("2steps_multi", True))
        ),  # RM strict, CM loose
        *(
            _wemath("4", k, c)
            for k, c in (
                ("3steps_1", False),
                ("3steps_2", False),
                ("3steps_3", False),
                ("3steps_multi", True),
            )
        ),  # RM both
        *(_wemath("5", k, False) for k in ("2steps_1", "2steps_2", "2steps_multi")),  # IK
    ]
    dims = wemath_scores(records)
    assert dims["n"] == 5 and dims["IG"] == 1 and dims["IK"] == 1
    assert (dims["CM_strict"], dims["CM_loose"], dims["RM_strict"], dims["RM_loose"]) == (
        1,
        2,
        2,
        1,
    )
    assert dims["score_strict"] == pytest.approx((5 - 0.5 - 2 - 1) / 5)
    assert dims["score_loose"] == pytest.approx((5 - 0.5 - 1 - 1) / 5)
    s = score_records("wemath", records)
    assert s.accuracy == pytest.approx(0.3) and s.interval == ""
    header, rows = comparison_rows([Run("tiny", tmp_path, {"wemath": s})])
    assert rows[0] == ["WeMath (strict)", "—", "—", "44.6", "30.0 · rules:choice"]
    assert rows[1] == ["WeMath loose", "—", "—", "64.8", "50.0 · rules:choice"]


def test_report_marks_the_scorer_and_counts_the_statuses(tmp_path):
    records = [_record(i, i < 2) for i in range(4)]
    records[0]["scorer"] = records[1]["scorer"] = "judge:gpt-4o"
    records[2].update(scorer="judge:gpt-4o", status="unjudged")
    records[3]["scorer"] = "judge:gpt-4o"
    s = score_records("mathverse", records)
    assert s.scorer == "judge:gpt-4o" and s.statuses == {"correct": 2, "unjudged": 1, "wrong": 1}
    records[3]["scorer"] = "rules:math"
    assert score_records("mathverse", records).scorer == "mixed: judge:gpt-4o 3, rules:math 1"
    run = tmp_path / "run"
    run.mkdir()
    _write_jsonl(run / "mathverse.jsonl", records)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "mixed: judge:gpt-4o 3, rules:math 1" in md and "unjudged 1" in md
    assert "official scorer: GPT-4 extracts" in md and "ZrrSkywalker/MathVerse" in md


def test_rescore_with_an_unreachable_judge_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["rescore", str(run), "--judge-endpoint", url]) == 2
    assert capsys.readouterr().err.startswith("ovr-eval: error: cannot reach")
