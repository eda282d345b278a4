"""Rows are what they say, and every error names a row by the file's 1-based line.

Each command that reads a JSON Lines file is run (in this process, through `qrm_hf.cli.main`) on files
with a blank line, a good row and a bad row; the table of commands is checked against the parser, so a data
option added later without an entry fails here. Models are tiny: a random QRM with the word-level
tokenizer of `test_hub` (128 positions), a random Llama backbone / SFT base with the same tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_hub import make_tokenizer, saved_qrm
from test_trl import save_tiny_policy, tiny_tokenizer
from transformers import LlamaForCausalLM

from conftest import run_cli, tiny_backbone_config
from qrm_hf.cli import build_parser
from qrm_hf.data import read_jsonl
from qrm_hf.dataset_loading import attribute_examples, load_rows, response_conversations
from qrm_hf.dataset_preset import DatasetPreset

LONG = " ".join(["w20"] * 140)  # more tokens than the tiny models' 128 positions
NULL_ASSISTANT = [{"role": "assistant", "content": None}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    qrm = saved_qrm(root / "qrm", seed=3)[2]
    tokenizer = make_tokenizer()
    backbone = root / "backbone"
    LlamaForCausalLM(tiny_backbone_config()).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    base = root / "base"
    save_tiny_policy(base, tiny_tokenizer())
    calibration = write_lines(root / "calibration.jsonl", [
        json.dumps({"prompt": "w11", "response": f"w{20 + i} w{30 + i % 7}", "helpfulness": i % 5,
                    "correctness": (i * 3) % 5, "safety": (i * 7) % 5})
        for i in range(30)
    ])  # fmt: skip
    return {"qrm": qrm, "backbone": backbone, "base": base, "calibration": calibration}


def one_line_error(code: int, err: str) -> str:
    """The error line of a refused command (exit 2, one line; progress bars are left aside)."""
    progress = ("%|", "examples/s", "it/s]")
    lines = [line for line in err.splitlines() if line.strip() and not any(bar in line for bar in progress)]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("qrm ") and "Traceback" not in err, err
    return lines[0]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def transcript(question: str, answer: str) -> str:
    return f"\n\nHuman: {question}\n\nAssistant: {answer}"


# One good row and one bad row (its error comes from the row's content, not from its JSON) per kind of file.
ROWS = {
    "response": ({"prompt": "w11", "response": "w20", "helpfulness": 1, "correctness": 2, "safety": 3},
                 {"prompt": "w12", "response": None, "helpfulness": 1, "correctness": 2, "safety": 3}),
    "pair": ({"prompt": "w11", "chosen": "w20", "rejected": "w21"},
             {"prompt": "w12", "chosen": None, "rejected": "w21"}),
    "rewardbench": ({"prompt": "w11", "chosen": "w20", "rejected": "w21", "subset": "alpacaeval-easy", "id": 1},
                    {"prompt": "w12", "chosen": "w20", "rejected": None, "subset": "alpacaeval-easy", "id": 2}),
    "hh": ({"chosen": transcript("Hi", "Hello."), "rejected": transcript("Hi", "No.")},
           {"chosen": "no transcript markers", "rejected": "none here either"}),
}  # fmt: skip

# Every (command, option) that reads a JSON Lines file: the kind of rows it reads and its command line.
OUT = "{out}"
READERS = {
    ("score", "--file"): ("response", ["score", "{qrm}", "--file", "{file}"]),
    ("evaluate", "--ratings"): ("response", ["evaluate", "{qrm}", "--ratings", "{file}"]),
    ("calibrate", "--ratings"): ("response", ["calibrate", "{qrm}", "--ratings", "{file}", "--output-dir", OUT]),
    ("calibrate", "--heldout"): ("response", [
        "calibrate", "{qrm}", "--ratings", "{calibration}", "--heldout", "{file}", "--output-dir", OUT]),
    ("evaluate", "--pairs"): ("pair", ["evaluate", "{qrm}", "--pairs", "{file}"]),
    ("evaluate", "--showcase"): ("response", ["evaluate", "{qrm}", "--showcase", "{file}"]),
    ("preference-strength", "--pairs"): ("pair", ["preference-strength", "{qrm}", "--pairs", "{file}"]),
    ("rewardbench", "--data"): ("rewardbench", ["rewardbench", "{qrm}", "--data", "{file}"]),
    ("extract", "--source"): ("response", [
        "extract", "{backbone}", "--kind", "attribute", "--source", "{file}", "--prompt", "prompt",
        "--response", "response", "--attributes", "helpfulness", "--label-range", "0", "4", "--output-dir", OUT]),
    ("sft", "--data"): ("hh", ["sft", "{base}", "--data", "{file}", "--output-dir", OUT, "--precision", "fp32"]),
    ("rloo", "--data"): ("hh", ["rloo", "{base}", "{qrm}", "--data", "{file}", "--output-dir", OUT]),
    ("grpo", "--data"): ("hh", ["grpo", "{base}", "{qrm}", "--data", "{file}", "--output-dir", OUT]),
}  # fmt: skip
# Options that name no rows: feature directories, and dataset ids listed in a model card (`assemble`).
NOT_ROWS = {"--baselines", "--features", "--datasets"}


def command_options() -> dict[str, list]:
    """The argparse actions of every `qrm` command."""
    parser = build_parser()
    commands = next(action for action in parser._actions if action.__class__.__name__ == "_SubParsersAction")
    return {name: command._actions for name, command in commands.choices.items()}


def data_file_options() -> set[tuple[str, str]]:
    """(command, option) of every option whose help says it reads a data file (JSON Lines or a dataset)."""
    found = set()
    for name, actions in command_options().items():
        for action in actions:
            text = (action.help or "").lower()
            long = [option for option in action.option_strings if option.startswith("--")]
            if (
                long
                and long[0] not in NOT_ROWS
                and any(word in text for word in ("jsonl", "json lines", "dataset id"))
            ):
                found.add((name, long[0]))
    return found


def argv_for(reader: tuple[str, str], models: dict, file: Path, out: Path) -> list[str]:
    _, template = READERS[reader]
    values = {**{key: str(value) for key, value in models.items()}, "file": str(file), "out": str(out)}
    return [part.format(**values) for part in template]


def test_the_table_covers_every_command_that_reads_rows():
    assert data_file_options() <= set(READERS), data_file_options() - set(READERS)
    assert len(data_file_options()) >= 8  # the help texts do say what they read


@pytest.mark.parametrize("reader", sorted(READERS), ids="-".join)
def test_errors_name_the_file_line_of_the_row(models, tmp_path, capsys, reader):
    good, bad = ROWS[READERS[reader][0]]
    # line 1 good, line 2 blank, line 3 good, line 4 bad: "row 2" (0-based, blanks skipped) would be wrong
    file = write_lines(tmp_path / "rows.jsonl", [json.dumps(good), "", json.dumps(good), json.dumps(bad)])
    code, err = run_cli(capsys, *argv_for(reader, models, file, tmp_path / "out"))
    assert f"{file} line 4" in one_line_error(code, err)


@pytest.mark.parametrize("reader", sorted(READERS), ids="-".join)
def test_a_lone_surrogate_is_refused_naming_its_line(models, tmp_path, capsys, reader):
    good, _ = ROWS[READERS[reader][0]]
    surrogate = json.dumps(good).replace('"w11"', '"w11 \\ud800"').replace("Hi", "Hi \\ud800")
    assert "\\ud800" in surrogate
    file = write_lines(tmp_path / "rows.jsonl", [json.dumps(good), "", surrogate])
    code, err = run_cli(capsys, *argv_for(reader, models, file, tmp_path / "out"))
    line = one_line_error(code, err)
    assert f"{file} line 3" in line and "lone surrogate" in line


@pytest.mark.parametrize("reader", sorted(READERS), ids="-".join)
def test_a_row_nested_too_deeply_is_refused_naming_its_line(models, tmp_path, capsys, reader):
    """100 000 nested brackets made json.loads raise RecursionError: a traceback for a bad row."""
    good, _ = ROWS[READERS[reader][0]]
    deep = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    file = write_lines(tmp_path / "rows.jsonl", [json.dumps(good), deep])
    code, err = run_cli(capsys, *argv_for(reader, models, file, tmp_path / "out"))
    line = one_line_error(code, err)
    assert f"{file} line 2" in line and "nested too deeply" in line


@pytest.mark.parametrize("reader", sorted(READERS), ids="-".join)
def test_a_key_given_twice_in_a_row_is_refused_naming_its_line(models, tmp_path, capsys, reader):
    good, _ = ROWS[READERS[reader][0]]
    key = next(iter(good))  # the row says two things for it: python's json keeps the last, pyarrow fails
    twice = json.dumps(good)[:-1] + f", {json.dumps(key)}: {json.dumps(good[key] + ' w13')}}}"
    assert json.loads(twice)[key] != good[key]
    file = write_lines(tmp_path / "rows.jsonl", [json.dumps(good), "", twice])
    code, err = run_cli(capsys, *argv_for(reader, models, file, tmp_path / "out"))
    line = one_line_error(code, err)
    assert f"{file} line 3" in line and f"{key!r} appear twice" in line


def test_read_jsonl_gives_every_row_its_line(tmp_path):
    file = write_lines(tmp_path / "rows.jsonl", ['{"a": 1}', "", "   ", '{"a": 2}'])
    rows = read_jsonl(file)
    assert rows == [{"a": 1}, {"a": 2}]
    assert rows.row_locations == [f"{file} line 1", f"{file} line 4"]
    dataset = load_rows(file, limit=1)  # the datasets path keeps them too
    assert dataset.row_locations == [f"{file} line 1"]


# ----------------------------------------------------------------------------------------- content


def test_a_null_assistant_content_is_refused_like_a_null_response(models, tmp_path, capsys):
    file = write_lines(tmp_path / "rows.jsonl", [json.dumps({"prompt": "w11", "response": NULL_ASSISTANT})])
    for command in (
        ["score", models["qrm"], "--file", file],
        ["evaluate", models["qrm"], "--showcase", file],
    ):
        line = one_line_error(*run_cli(capsys, *command))
        assert f"{file} line 1: the content of a 'assistant' message is missing (null)" in line
    with pytest.raises(ValueError, match="message is missing"):  # every converter: training data too
        attribute_examples(
            [{"prompt": "w11", "response": NULL_ASSISTANT, "h": 1}],
            DatasetPreset.custom("attribute", prompt="prompt", response="response", attributes=["h"],
                                 label_ranges=(0, 4)),
        )  # fmt: skip


@pytest.mark.parametrize("content", [[{"type": "text", "text": "w11"}], 5])
def test_a_message_content_that_is_not_a_string_is_refused_not_scored_as_its_repr(
    models, tmp_path, capsys, content
):
    # str() of a list of parts is "[{'type': 'text', ...}]": the text scored would not be the row's
    row = {"prompt": [{"role": "user", "content": content}], "response": "w20"}
    file = write_lines(
        tmp_path / "rows.jsonl", [json.dumps({"prompt": "w11", "response": "w20"}), json.dumps(row)]
    )
    line = one_line_error(*run_cli(capsys, "score", models["qrm"], "--file", file))
    assert f"{file} line 2: the content of a message must be a string" in line
    with pytest.raises(ValueError, match="must be a string"):  # every converter: training data too
        attribute_examples(
            [{**row, "h": 1}],
            DatasetPreset.custom("attribute", prompt="prompt", response="response", attributes=["h"],
                                 label_ranges=(0, 4)),
        )  # fmt: skip


def test_a_system_turn_in_a_response_is_refused_not_moved(models, tmp_path, capsys):
    response = [{"role": "system", "content": "w13"}, {"role": "assistant", "content": "w20"}]
    file = write_lines(tmp_path / "rows.jsonl", [json.dumps({"prompt": "w11", "response": response})])
    line = one_line_error(*run_cli(capsys, "score", models["qrm"], "--file", file))
    assert f"{file} line 1: the response holds a 'system' turn but no user turn" in line
    # a whole conversation given as the response keeps its order, as written
    whole = [{"role": "system", "content": "w13"}, {"role": "user", "content": "w11"},
             {"role": "assistant", "content": "w20"}]  # fmt: skip
    assert response_conversations([{"prompt": None, "response": whole}]) == [whole]


# --------------------------------------------------------------------------------- over-long rows


@pytest.mark.parametrize(
    "command, rows",
    [
        ("score", [{"prompt": "w11", "response": "w20"}, {"prompt": "w12", "response": LONG}]),
        ("preference-strength", [{"prompt": "w11", "chosen": "w20", "rejected": "w21"},
                                 {"prompt": "w11", "chosen": "w20", "rejected": LONG}]),
        ("rewardbench", [{"prompt": "w11", "chosen": "w20", "rejected": "w21", "subset": "alpacaeval-easy", "id": 1},
                         {"prompt": "w11", "chosen": "w20", "rejected": LONG, "subset": "alpacaeval-easy", "id": 2}]),
    ],
)  # fmt: skip
def test_over_long_conversations_are_named_by_their_line(models, tmp_path, capsys, command, rows):
    file = write_lines(tmp_path / "rows.jsonl", [json.dumps(rows[0]), "", json.dumps(rows[1])])
    option = {"score": "--file", "preference-strength": "--pairs", "rewardbench": "--data"}[command]
    line = one_line_error(*run_cli(capsys, command, models["qrm"], option, file))
    assert "longer than max_length=128 tokens" in line and f"{file} line 3 (" in line


# ------------------------------------------------------------------------------------ --max-length

MAX_LENGTH_COMMANDS = {
    "score": ["score", "{qrm}", "--prompt", "w11", "--response", "w20"],
    "evaluate": ["evaluate", "{qrm}", "--showcase", "{file}"],
    "calibrate": ["calibrate", "{qrm}", "--ratings", "{calibration}", "--output-dir", "{out}"],
    "preference-strength": ["preference-strength", "{qrm}", "--pairs", "{pairs}"],
    "rewardbench": ["rewardbench", "{qrm}", "--data", "{rewardbench}"],
    "extract": READERS["extract", "--source"][1],
    "sft": READERS["sft", "--data"][1],
}


def test_every_max_length_above_the_models_positions_is_refused(models, tmp_path, capsys):
    with_option = {
        name
        for name, actions in command_options().items()
        if any("--max-length" in action.option_strings for action in actions)
    }
    # sft's trainer options (TRL's SFTConfig fields, max_length among them) are parsed by its handler
    assert with_option | {"sft"} == set(MAX_LENGTH_COMMANDS)
    files = {kind: write_lines(tmp_path / f"{kind}.jsonl", [json.dumps(ROWS[kind][0])] * 2) for kind in ROWS}
    values = {key: str(value) for key, value in models.items()}
    values.update(
        file=files["response"], pairs=files["pair"], rewardbench=files["rewardbench"], out=tmp_path / "out"
    )
    for command, template in MAX_LENGTH_COMMANDS.items():
        argv = [part.format(**values) for part in template]
        if command == "sft":
            argv[argv.index("--data") + 1] = str(files["hh"])
        line = one_line_error(*run_cli(capsys, *argv, "--max-length", "100000"))
        assert "max_length (--max-length) 100000 is more than the" in line, (command, line)
        assert not (tmp_path / "out").exists()
