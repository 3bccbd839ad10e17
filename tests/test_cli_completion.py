"""``ketta-build completion``: the bash script, sourced in a real bash, completes verbs, flags and
releases as the parser has them; zsh and fish scripts are made from the same walk."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from ketta_build.cli import COMMANDS, build_parser, main
from ketta_build.releases import load_releases

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("completion") / "ketta-build.bash"
    with pytest.MonkeyPatch.context() as mp:
        out = []
        mp.setattr("sys.stdout", type("W", (), {"write": lambda self, t: out.append(t), "flush": lambda self: None})())
        assert main(["completion", "bash"]) == 0
    path.write_text("".join(out))
    return path


def complete(script, line: str) -> list[str]:
    """What bash offers for ``line`` (the word being completed is the last one, "" after a space)."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    proc = subprocess.run(["bash", "-c", f'source "{script}"; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; '
                                        '_ketta_build; printf "%s\\n" "${COMPREPLY[@]}"'],
                          capture_output=True, text=True, check=True)
    assert proc.stderr == "", proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_completes_a_verb_a_flag_and_a_release(bash_script):
    assert complete(bash_script, "ketta-build ap") == ["apply"]
    assert "--letta" in complete(bash_script, "ketta-build apply --le")
    offered = complete(bash_script, "ketta-build apply --letta 0.16.")
    supported = [str(r.version) for r in load_releases() if str(r.version).startswith("0.16.")]
    assert offered == supported and "0.16.8" in offered
    assert complete(bash_script, "ketta-build upstream ") == ["check"]
    assert "--issue-dir" in complete(bash_script, "ketta-build upstream check --")
    assert complete(bash_script, "ketta-build matrix --upgrade-pairs ") == ["all", "ci"]
    assert complete(bash_script, "ketta-build cache ") == ["info", "prune"]
    assert "--out" not in complete(bash_script, "ketta-build wheel --")  # a deprecated spelling is not offered


def test_bash_offers_exactly_the_parsers_verbs_and_each_verbs_flags(bash_script):
    assert set(complete(bash_script, "ketta-build ")) == set(COMMANDS)
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for verb, parser in sub.choices.items():
        flags = {f for a in parser._actions if a.help != argparse.SUPPRESS for f in a.option_strings if f.startswith("--")}
        assert flags <= set(complete(bash_script, f"ketta-build {verb} --")), verb


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_every_verb_and_the_releases(shell, capsys):
    assert main(["completion", shell]) == 0
    text = capsys.readouterr().out
    for verb in COMMANDS:
        assert verb in text, verb
    assert str(load_releases().newest.version) in text


def test_completion_refuses_an_unknown_shell(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["completion", "tcsh"])
    assert exc.value.code == 2 and "tcsh" in capsys.readouterr().err


def test_outside_the_checkout_the_script_is_made_without_releases(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["completion", "bash"]) == 0
    out, err = capsys.readouterr()
    assert '_ketta_build_releases=""' in out and "complete -o filenames -F _ketta_build ketta-build" in out
    assert err.startswith("ketta-build completion: warning: ") and len(err.splitlines()) == 1
    assert main(["completion", "bash", "--patches", str(tmp_path / "nowhere")]) == 2  # a series named must be there
