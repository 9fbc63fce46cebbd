"""Training data: every accepted shape becomes the OVR chat format; bad rows are counted per rule."""

from __future__ import annotations

import json

import pytest

from ovr_core.format import is_well_formed, split_reasoning
from ovr_train.data import DataError, build_dataset, check_rows, normalize_row, write_jsonl

GOOD = "<think>\n7 times 6 is 42.\n</think>\n\nThe answer is \\boxed{42}."

# (row, expected problems); a good row's completion must come out well formed.
SHAPES = [
    ({"question": "7*6?", "reasoning": "7 times 6 is 42.", "answer": "\\boxed{42}"}, []),
    (
        {"question": "7*6?", "reasoning": "7 times 6 is 42.", "answer": "42"},
        [],
    ),  # bare answer gets boxed
    ({"prompt": "7*6?", "response": GOOD}, []),
    ({"prompt": "7*6?", "completion": GOOD}, []),
    (
        {"prompt": "7*6?", "response": "7 times 6 is 42.\n</think>\n\n\\boxed{42}"},
        [],
    ),  # R1: template opened <think>
    (
        {"messages": [{"role": "user", "content": "7*6?"}, {"role": "assistant", "content": GOOD}]},
        [],
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "7*6?"},
                {"role": "assistant", "content": "\\boxed{42}", "reasoning_content": "7 times 6."},
            ]
        },
        [],
    ),
    ({"conversations": [{"from": "human", "value": "7*6?"}, {"from": "gpt", "value": GOOD}]}, []),
    (
        {
            "prompt": [{"role": "user", "content": "7*6?"}],
            "completion": [{"role": "assistant", "content": GOOD}],
        },
        [],
    ),
    ({"system": "Be brief.", "prompt": "7*6?", "response": GOOD}, []),
    ({"text": "no known columns"}, ["unknown_shape"]),
    (
        {"prompt": "7*6?", "response": "<think>\nstill thinking"},
        ["unclosed_think", "missing_answer"],
    ),
    ({"prompt": "7*6?", "response": "<think>\nr\n</think>\n\n"}, ["missing_answer"]),
    ({"prompt": "7*6?", "response": "<think>\nr\n</think>\n\nforty-two"}, ["missing_boxed"]),
    ({"prompt": "7*6?", "response": "\\boxed{42}"}, ["missing_reasoning"]),
    ({"prompt": "", "response": GOOD}, ["missing_question"]),
    (
        {"prompt": "7*6?", "response": "<think>a</think> b <think>c</think> \\boxed{1}"},
        ["unclosed_think"],
    ),
]


@pytest.mark.parametrize(("row", "problems"), SHAPES)
def test_each_shape_normalises_to_the_ovr_chat_format(row, problems):
    example, found = normalize_row(row)
    assert found == problems
    if problems:
        assert example is None
        return
    assert example["prompt"][-1]["role"] == "user"
    (turn,) = example["completion"]
    assert turn["role"] == "assistant"
    assert is_well_formed(turn["content"]), turn["content"]
    assert split_reasoning(turn["content"]).reasoning.strip()


def test_system_turn_is_kept_before_the_question():
    example, _ = normalize_row({"system": "Be brief.", "prompt": "7*6?", "response": GOOD})
    assert [t["role"] for t in example["prompt"]] == ["system", "user"]


def test_check_reports_each_rule_with_counts_and_row_numbers(tmp_path):
    from PIL import Image

    good_png = tmp_path / "ok.png"
    Image.new("RGB", (32, 32), "red").save(good_png)
    broken_png = tmp_path / "broken.png"
    broken_png.write_bytes(b"\x89PNG not really")
    rows = [
        {"question": "q1", "reasoning": "r", "answer": "1"},  # 1 good
        {"prompt": "q2", "response": "<think>\nnever closed"},  # 2 unclosed + missing answer
        {
            "question": "q3",
            "reasoning": "r",
            "answer": "3",
            "image": str(good_png),
        },  # 3 good, multimodal
        {
            "question": "q4",
            "reasoning": "r",
            "answer": "4",
            "image": str(broken_png),
        },  # 4 bad image
        {
            "question": "q5",
            "reasoning": "r",
            "answer": "5",
            "images": [str(tmp_path / "gone.png")],
        },  # 5
        {"oops": True},  # 6 unknown shape
        {"prompt": "q7", "response": "<think>\nr\n</think>\n\nno box"},  # 7 missing boxed
    ]
    path = write_jsonl(rows, tmp_path / "mixed.jsonl")
    with open(path, "a") as fh:
        fh.write("{not json\n")  # 8 unparseable line: unknown shape at its row number
    examples, report = check_rows([str(path)])
    assert report.rows == 8
    assert report.bad_rows == 6
    rows_of = {rule: [n for _, n in places] for rule, places in report.failures.items()}
    assert rows_of == {
        "unclosed_think": [2],
        "missing_answer": [2],
        "bad_image": [4, 5],
        "unknown_shape": [6, 8],
        "missing_boxed": [7],
    }
    assert len(examples) == 2 and examples[1]["images"] == [str(good_png)]
    assert examples[1]["prompt"][-1]["content"][0] == {"type": "image"}
    text = report.render()
    assert "8 rows, 6 bad" in text
    assert "bad_image" in text and "mixed.jsonl:4, mixed.jsonl:5" in text


def test_over_max_length_uses_the_tokenizer(tmp_path, tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    rows = [
        {"question": "7*6?", "reasoning": "short", "answer": "42"},
        {"question": "7*6?", "reasoning": "long " * 400, "answer": "42"},
    ]
    path = write_jsonl(rows, tmp_path / "lengths.jsonl")
    examples, report = check_rows([str(path)], tokenizer, max_length=128)
    assert len(examples) == 1
    assert report.failures == {"over_max_length": [(str(path), 2)]}


def test_training_refuses_bad_rows_unless_told_to_skip(tmp_path):
    rows = [
        {"question": "q", "reasoning": "r", "answer": "1"},
        {"prompt": "q", "response": "no think"},
    ]
    path = str(write_jsonl(rows, tmp_path / "d.jsonl"))
    with pytest.raises(DataError, match="missing_reasoning") as err:
        build_dataset([path], on_bad_rows="error")
    assert "on_bad_rows=skip" in str(err.value)
    dataset, report = build_dataset([path], on_bad_rows="skip")
    assert len(dataset) == 1 and report.bad_rows == 1


def test_parquet_and_json_files_load(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "q", "reasoning": "r", "answer": "1"}] * 3
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    examples, report = check_rows([str(tmp_path / "d.parquet"), str(tmp_path / "d.json")])
    assert len(examples) == 6 and report.bad_rows == 0


def test_data_check_command_exit_code_and_report(tmp_path, capsys):
    from ovr_train.cli import main

    good = write_jsonl(
        [{"question": "q", "reasoning": "r", "answer": "1"}], tmp_path / "good.jsonl"
    )
    bad = write_jsonl([{"question": "q", "reasoning": "", "answer": "1"}], tmp_path / "bad.jsonl")
    assert main(["data", "check", str(good)]) == 0
    assert "1 rows, 0 bad" in capsys.readouterr().out
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "missing_reasoning" in out and "bad.jsonl:1" in out


def test_data_is_prepared_once_cached_on_disk_and_read_back(tmp_path, tiny_model_path):
    """The main process prepares (normalises, measures, writes Arrow + report) under a key of the
    sources, tokenizer and max_length; a second reader (another rank, a resumed run) gets the
    same rows and report from disk without preparing again; a new max_length prepares afresh."""
    from transformers import AutoTokenizer

    from ovr_train.data import prepare_dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    good = {"question": "1+1?", "reasoning": "one and one", "answer": "2"}
    long = {"question": "Count.", "reasoning": "one " * 300, "answer": "300"}
    path = write_jsonl([good, {"question": "no answer"}, long, good], tmp_path / "d.jsonl")
    entered = []

    class MainFirst:  # stands in for TrainingArguments.main_process_first (records each use)
        def __init__(self, desc):
            entered.append(desc)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cache = tmp_path / "prepared"
    first, report, where = prepare_dataset(
        [str(path)], "skip", tokenizer, 128, cache, main_process_first=MainFirst
    )
    assert len(first) == 2 and report.rows == 4 and report.bad_rows == 2
    assert "over_max_length" in report.failures and len(report.failures) == 2
    assert report.failures["over_max_length"] == [(str(path), 3)] and report.tokens > 0
    assert entered == ["prepare the training data"]
    (where / "marker").write_text("left by the first preparation")
    again, report_again, where_again = prepare_dataset(
        [str(path)], "skip", tokenizer, 128, cache, main_process_first=MainFirst
    )
    assert where_again == where and (where / "marker").exists(), "prepared twice"
    assert again[:] == first[:] and report_again == report
    with pytest.raises(DataError, match="on_bad_rows=skip"):
        prepare_dataset([str(path)], "error", tokenizer, 128, cache)
    _, longer, other = prepare_dataset([str(path)], "skip", tokenizer, 4096, cache)
    assert other != where and "over_max_length" not in longer.failures
