"""`kiln generate`: the parser from kiln.cli_generate, run through the `kiln` entry point."""
import argparse

import pytest

from kiln import cli, cli_generate
from kiln.errors import KilnError


def _args(argv):
    parser = argparse.ArgumentParser(prog="kiln")
    cli_generate.add_parser(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(["generate", *argv])


def test_generate_smoke(hf_folder, executor, capsys):
    folder = hf_folder("llama")
    code = cli.main(["generate", "What is the capital of France?", "--model", str(folder),
                              "--max-new-tokens", "6", "--executor", executor, "--max-len", "64", "--compare-torch"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "exporting and optimizing" in err and "s]" in err         # progress steps with elapsed time
    assert "prompt " in err and "tokens/s" in err and "prefill" in err  # summary line
    assert "torch:" in err and "tokens match" in err                 # --compare-torch: same greedy tokens
    assert out.endswith("\n")


def test_generate_sampling_no_chat(hf_folder, executor, capsys):
    args = _args(["Paris", "-m", str(hf_folder("gpt2")), "-n", "4", "--temperature", "0.8", "--top-k", "20",
                  "--top-p", "0.9", "--seed", "1", "--no-chat", "--executor", executor, "--max-len", "32"])
    assert cli_generate.run(args) == 0
    assert "4 new tokens" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["hi", "--max-new-tokens", "ten"], "--max-new-tokens must be an integer"),
    (["hi", "--max-new-tokens", "-3"], "--max-new-tokens must be >= 0"),
    (["hi", "--temperature", "hot"], "--temperature must be a number"),
    (["hi", "--temperature", "nan"], "--temperature must be a number"),
    (["hi", "--top-p", "1.5"], "--top-p must be in"),
    (["hi", "--top-p", "0"], "--top-p must be in"),
    (["hi", "--top-k", "2.5"], "--top-k must be an integer"),
    (["hi", "--executor", "gpu"], "--executor must be one of"),
    (["hi", "--compare-torch", "--temperature", "1"], "greedy"),
    (["hi", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["hi", "--model", "/nonexistent/model.gguf"], "does not exist"),
])
def test_bad_input_is_a_kiln_error(argv, message, capsys):
    with pytest.raises(KilnError, match=message.replace("(", r"\(")):
        cli_generate.run(_args(argv))
    assert cli.main(["generate", *argv]) == 2
    err = capsys.readouterr().err
    assert "kiln: error:" in err and "Traceback" not in err
