"""The benchmarks' own scorers (lmms-eval 0.7.3's task code), called on answers: a batch runner.

Runs inside the reference venv (``scripts/reference-scorers.sh`` builds ``.cache/refvenv``), never
in ovr's: ``python reference_scorers.py < cases.json > scores.json``. Each case is
``{"bench", "gold", "completion", "choices"?}``; each score is 1, 0, or ``{"error": …}``.

Which scorer each benchmark is held against (``REFERENCE``) is the task lmms-eval runs for it;
where lmms-eval has a ``reasoning`` variant (the one for thinking models, like OVR) it is that
one's ``compute_score`` with its LLM judge off (the default, ``USE_LLM_JUDGE=False``).

lmms-eval's ``tasks/__init__.py`` builds the whole task registry (torch, transformers, …); the
scorers need none of it, so the ``lmms_eval.tasks`` package is entered without running that file
(``_enter_tasks_package``): every scorer module below is lmms-eval's own file, imported as is.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import random
import sys
import types
from pathlib import Path


def _enter_tasks_package() -> None:
    import lmms_eval

    tasks = types.ModuleType("lmms_eval.tasks")
    tasks.__path__ = [str(Path(lmms_eval.__file__).parent / "tasks")]
    sys.modules["lmms_eval.tasks"] = tasks


def _task(name: str):
    return importlib.import_module(f"lmms_eval.tasks.{name}")


def _compute(source: str):
    def score(case: dict) -> float:
        compute_score = _task("_task_utils.reasoning_utils").compute_score
        extra = {"question": case.get("question", "")}
        return compute_score(source, case["completion"].strip(), case["gold"], extra)["acc_score"]

    return score


def _exact_match(module: str):
    def score(case: dict) -> float:
        doc = {"answer": case["gold"]}
        return _task(module).process_results(doc, [case["completion"]])["exact_match"]

    return score


def _math_verify(case: dict) -> float:
    # lmms-eval's math-verify scorer (its MATH task asks GPT; AIME's exact match is kept for AIME)
    verify = _task("_task_utils.math_verify_utils").MathVerifyFn(timeout_seconds=None)
    return float(verify(case["completion"], case["gold"])[0])


def _mmlu(case: dict) -> float:
    extract = _task("_task_utils.mcq_extract").extract_mcq_answer
    letters = [chr(65 + k) for k in range(len(case.get("choices") or "ABCD"))]
    return float(extract(case["completion"], letters) == case["gold"])


def _mmlu_pro(case: dict) -> float:
    # the task's filter "custom-extract" (its YAML): the first match of the regex, then
    # exact_match; lmms-eval's RegexFilter is not importable without torch, and does only
    # findall(...)[0] (the YAML is read from the installed task, so its pattern is the task's)
    import re

    import yaml

    path = Path(_task("_task_utils").__path__[0]).parent / "mmlu_pro" / "_default_template_yaml"
    config = yaml.safe_load(path.read_text().replace("!function", ""))
    pattern = config["filter_list"][0]["filter"][0]["regex_pattern"]
    found = re.findall(pattern, case["completion"])
    return float(bool(found) and found[0].strip().upper() == case["gold"].upper())


def _mmmu_pro(case: dict) -> float:
    utils = _task("mmmu_pro.utils")
    index2ans, letters = utils.get_multi_choice_info(case["choices"])
    random.seed(0)  # it guesses a random letter when it finds none
    parsed = utils.parse_multi_choice_response(case["completion"], letters, index2ans)
    return float(utils.eval_multi_choice(case["gold"], parsed))


def _mathvision(case: dict) -> float:
    doc = {"answer": case["gold"], "options": case.get("choices") or []}
    out = _task("mathvision.utils").mathvision_process_results(doc, [case["completion"]])
    return float(out["mathvision_standard_eval"]["scores"][0])


REFERENCE = {
    "aime24": _exact_match("aime.utils"),
    "aime25": _exact_match("aime.utils"),
    "math500": _math_verify,
    "gpqa": _exact_match("gpqa.openai.utils"),
    "mmlu": _mmlu,
    "mmlu-pro": _mmlu_pro,
    "mathvista": _compute("mathvista"),
    "mathvision": _mathvision,
    "mathverse": _compute("mathvista"),  # lmms-eval's mathverse reasoning task passes "mathvista"
    "dynamath": _compute("dynamath"),
    "wemath": _compute("wemath"),
    "logicvista": _compute("logicvista"),
    "mmmu-pro": _mmmu_pro,
    "charxiv": _compute("charxiv"),
}


def main() -> None:
    cases = json.load(sys.stdin)
    _enter_tasks_package()
    out = []
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print a line per wrong answer
        for case in cases:
            try:
                out.append(float(REFERENCE[case["bench"]](case)))
            except Exception as e:  # a scorer that crashes on an answer: kept, not a 0
                out.append({"error": f"{type(e).__name__}: {e}"[:200]})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
