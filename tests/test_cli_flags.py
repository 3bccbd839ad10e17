"""The verbs' flags: a name means the same thing everywhere, and the defaults come from releases.toml."""

from __future__ import annotations

import argparse

from ketta_build.cli import build_parser
from ketta_build.releases import load_releases

SHARED = ("--patches", "--index-url", "--cache-dir", "--json", "--build-root", "--tree")


def _verbs(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(_verbs(sub, f"{prefix}{name} "))
    return found


def test_a_shared_flag_has_one_help_text_and_one_meaning():
    helps: dict[str, set[str]] = {}
    dests: dict[str, set[str]] = {}
    for verb, sub in _verbs(build_parser()).items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in SHARED:
                    helps.setdefault(flag, set()).add(action.help)
                    dests.setdefault(flag, set()).add(action.dest)
    assert {"--patches", "--index-url", "--cache-dir", "--json"} <= set(helps)
    for flag in ("--patches", "--index-url", "--cache-dir", "--json", "--build-root"):
        assert len(helps[flag]) == 1, f"{flag} has {len(helps[flag])} help texts: {helps[flag]}"
    assert all(len(d) == 1 for d in dests.values()), dests


def test_every_verb_that_reports_can_emit_json():
    verbs = _verbs(build_parser())
    without = sorted(v for v, sub in verbs.items() if not any("--json" in a.option_strings for a in sub._actions)
                     and not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions))
    assert without == ["completion"], f"verbs without --json: {without}"  # completion prints a script, not a report


def test_apply_takes_tree_and_keeps_out(tmp_path):
    parser = build_parser()
    assert parser.parse_args(["apply", "--letta", "0.16.8", "--tree", str(tmp_path)]).tree == tmp_path
    assert parser.parse_args(["apply", "--letta", "0.16.8", "--out", str(tmp_path)]).tree == tmp_path


def test_serve_and_matrix_default_to_the_newest_supported_release():
    parser = build_parser()
    assert parser.parse_args(["serve"]).release is None  # resolved from releases.toml when the verb runs
    assert parser.parse_args(["matrix"]).release is None
    newest = str(load_releases().newest.version)
    for verb in ("serve", "matrix"):
        sub = _verbs(parser)[verb]
        text = next(a.help for a in sub._actions if "--letta" in a.option_strings)
        assert "releases.toml" in text and "0.16.8" not in text, text
    assert newest  # the file names one


def test_every_verb_takes_v_and_it_prints_each_step_on_stderr(capsys):
    from ketta_build.cli import _console

    verbs = _verbs(build_parser())
    leaves = [v for v, sub in verbs.items() if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)]
    assert sorted(v for v in leaves if not any("-v" in a.option_strings for a in verbs[v]._actions)) == []
    console = _console(stderr=False, verbose=True)
    with console.status("resolving letta 0.16.8") as status:
        status.update("building the wheel of 0.16.8")
    out, err = capsys.readouterr()
    assert err.splitlines() == ["resolving letta 0.16.8", "building the wheel of 0.16.8"] and out == ""


def test_out_means_the_build_tree_and_wheel_says_dist_dir(tmp_path, capsys):
    """One flag name per meaning: --out is apply's build tree; wheel's output directory is --dist-dir,
    and wheel's old --out still works, with one line on stderr saying what to type instead."""
    parser = build_parser()
    wheel = _verbs(parser)["wheel"]
    shown = [f for a in wheel._actions if a.help != argparse.SUPPRESS for f in a.option_strings]
    assert "--dist-dir" in shown and "--out" not in shown
    assert parser.parse_args(["wheel", "--dist-dir", str(tmp_path)]).dist_dir == tmp_path
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["wheel", "--out", str(tmp_path)]).dist_dir == tmp_path
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--out" in err and "--dist-dir" in err and "deprecated" in err, err
    for verb, sub in _verbs(parser).items():
        for action in sub._actions:
            if "--out" in action.option_strings and action.help != argparse.SUPPRESS:
                assert action.dest == "tree", f"{verb}: --out is not the build tree"


def test_a_wheel_error_about_the_output_directory_names_the_flag_typed(tmp_path, capsys):
    from ketta_build.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x\n")
    for flag in ("--dist-dir", "--out"):
        rc = main(["wheel", "--letta", "0.16.8", flag, str(afile / "dist"), "--cache-dir", str(tmp_path / "cache")])
        err = capsys.readouterr().err
        assert rc == 2 and f"error: {flag} {afile / 'dist'}" in err and "is a file" in err, err


def test_the_generic_flags_and_lettas_spellings_mean_the_same():
    """--release/--upstream-git/--upstream-dir work for any upstream; --letta/--letta-git/--letta-dir,
    the Letta plugin's spellings, set the very same values (issue #32: the README's commands are unchanged)."""
    parser = build_parser()
    for verb in ("apply", "series"):
        generic = parser.parse_args([verb, "--release", "1.2", "--upstream-git", "g", "--upstream-dir", "d"])
        letta = parser.parse_args([verb, "--letta", "1.2", "--letta-git", "g", "--letta-dir", "d"])
        assert (generic.release, generic.upstream_git, str(generic.upstream_dir)) == ("1.2", "g", "d")
        assert (letta.release, letta.upstream_git, str(letta.upstream_dir)) == ("1.2", "g", "d")
    for verb in ("wheel", "matrix"):
        assert parser.parse_args([verb, "--release", "1.2", "--letta", "1.3"]).release == ["1.2", "1.3"]
    assert parser.parse_args(["bisect", "p.diff", "--upstream-git", "g"]).upstream_git == "g"
    assert parser.parse_args(["upstream", "check", "--letta-git", "g"]).upstream_git == "g"
