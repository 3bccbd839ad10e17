"""``ketta-build completion bash|zsh|fish``: a shell completion script made from the parser itself.

The parser is walked once (verbs, nested verbs such as ``upstream check``, each verb's flags, the
choices of a flag or a positional argument); a flag whose value is a release (``--release``, or any
flag with metavar ``VERSION``) completes the supported releases of ``patches/releases.toml`` as
they were when the script was made. A flag hidden from ``--help`` (a deprecated spelling) is not
offered. zsh runs the bash script through ``bashcompinit``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh", "fish")
VERSION_FLAGS = ("--release", "--from", "--to")
FUNCTION = "_ketta_build"


@dataclass
class Context:
    """One verb (the top level is ``""``, a nested verb ``"upstream check"``) and what it takes."""

    path: str
    help: str = ""
    verbs: dict[str, str] = field(default_factory=dict)  # name -> help
    flags: dict[str, str] = field(default_factory=dict)  # flag -> help
    valued: list[str] = field(default_factory=list)  # flags that take a value
    versions: list[str] = field(default_factory=list)  # flags whose value is a release
    flag_choices: dict[str, list[str]] = field(default_factory=dict)
    choices: list[str] = field(default_factory=list)  # a positional argument's choices


def contexts(parser: argparse.ArgumentParser, path: str = "", help: str = "") -> list[Context]:
    ctx = Context(path, help)
    found = [ctx]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                ctx.verbs[name] = helps.get(name, "")
                found += contexts(sub, f"{path} {name}".strip(), helps.get(name, ""))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if not action.option_strings:
            ctx.choices += [str(c) for c in action.choices or ()]
            continue
        for flag in action.option_strings:
            ctx.flags[flag] = action.help or ""
            if action.nargs != 0:
                ctx.valued.append(flag)
                if flag in VERSION_FLAGS or action.metavar == "VERSION":
                    ctx.versions.append(flag)
                elif action.choices:
                    ctx.flag_choices[flag] = [str(c) for c in action.choices]
    return found


def _words(items) -> str:
    return " ".join(items)


def _case(function: str, arms: dict[str, str]) -> str:
    lines = [f"{function}() {{", '    case "$1" in']
    for key, value in arms.items():
        lines.append(f'        "{key}") echo "{value}" ;;')
    lines += ["    esac", "}"]
    return "\n".join(lines)


def bash(parser: argparse.ArgumentParser, versions: list[str]) -> str:
    found = contexts(parser)
    prog = parser.prog
    parts = [f"# bash completion for {prog}, made by `{prog} completion bash` from its parser",
             f"# (source it, or put it in ~/.local/share/bash-completion/completions/{prog})",
             f'{FUNCTION}_releases="{_words(versions)}"',
             _case(f"{FUNCTION}_verbs", {c.path: _words(c.verbs) for c in found if c.verbs}),
             _case(f"{FUNCTION}_flags", {c.path: _words(c.flags) for c in found}),
             _case(f"{FUNCTION}_valued", {c.path: _words(c.valued) for c in found if c.valued}),
             _case(f"{FUNCTION}_version_flags", {c.path: _words(c.versions) for c in found if c.versions}),
             _case(f"{FUNCTION}_choices", {c.path: _words(c.choices) for c in found if c.choices}),
             _case(f"{FUNCTION}_flag_choices", {f"{c.path}|{flag}": _words(values)
                                                 for c in found for flag, values in c.flag_choices.items()}),
             f'''{FUNCTION}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" ctx="" i w
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    # the verb path so far: words that name a verb of the context, skipping flags and their values
    for (( i = 1; i < COMP_CWORD; i++ )); do
        w="${{COMP_WORDS[i]}}"
        [[ $w == -* ]] && continue
        (( i > 1 )) && [[ " $({FUNCTION}_valued "$ctx") " == *" ${{COMP_WORDS[i-1]}} "* ]] && continue
        [[ " $({FUNCTION}_verbs "$ctx") " == *" $w "* ]] && ctx="${{ctx:+$ctx }}$w"
    done
    if [[ -n $prev && " $({FUNCTION}_version_flags "$ctx") " == *" $prev "* ]]; then
        COMPREPLY=( $(compgen -W "${FUNCTION}_releases" -- "$cur") )
        return 0
    fi
    if [[ -n $prev && " $({FUNCTION}_valued "$ctx") " == *" $prev "* ]]; then
        local choices
        choices="$({FUNCTION}_flag_choices "$ctx|$prev")"
        if [[ -n $choices ]]; then
            COMPREPLY=( $(compgen -W "$choices" -- "$cur") )
        else
            COMPREPLY=( $(compgen -f -- "$cur") )
        fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=( $(compgen -W "$({FUNCTION}_flags "$ctx")" -- "$cur") )
        return 0
    fi
    COMPREPLY=( $(compgen -W "$({FUNCTION}_verbs "$ctx") $({FUNCTION}_choices "$ctx")" -- "$cur") )
    (( ${{#COMPREPLY[@]}} == 0 )) && [[ -z $({FUNCTION}_verbs "$ctx") ]] && COMPREPLY=( $(compgen -f -- "$cur") )
    return 0
}}
complete -o filenames -F {FUNCTION} {prog}
''']
    return "\n".join(parts)


def zsh(parser: argparse.ArgumentParser, versions: list[str]) -> str:
    return (f"#compdef {parser.prog}\n# zsh completion for {parser.prog}: its bash completion through bashcompinit\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash(parser, versions))


def _fish_text(text: str) -> str:
    text = " ".join(text.split()).split(";")[0].split(" (")[0]
    return "'" + text[:70].replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(parser: argparse.ArgumentParser, versions: list[str]) -> str:
    prog = parser.prog
    found = contexts(parser)
    top = found[0]
    lines = [f"# fish completion for {prog}, made by `{prog} completion fish` from its parser",
             f"complete -c {prog} -f"]

    def condition(path: str) -> str:
        if not path:
            return f"not __fish_seen_subcommand_from {_words(top.verbs)}"
        words = path.split()
        cond = f"__fish_seen_subcommand_from {words[-1]}"
        if len(words) > 1:
            cond = f"__fish_seen_subcommand_from {words[0]}; and " + cond
        return cond

    for ctx in found:
        cond = condition(ctx.path)
        if ctx.path and ctx.verbs:  # a verb with verbs of its own: only until one is given
            cond += f"; and not __fish_seen_subcommand_from {_words(ctx.verbs)}"
        for name, help in ctx.verbs.items():
            lines.append(f"complete -c {prog} -n '{cond}' -a {name} -d {_fish_text(help)}")
        for choice in ctx.choices:
            lines.append(f"complete -c {prog} -n '{cond}' -a {choice}")
        for flag, help in ctx.flags.items():
            spec = f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"
            value = ""
            if flag in ctx.versions:
                value = f" -x -a '{_words(versions)}'"
            elif flag in ctx.flag_choices:
                value = f" -x -a '{_words(ctx.flag_choices[flag])}'"
            elif flag in ctx.valued:
                value = " -r -F"
            lines.append(f"complete -c {prog} -n '{cond}' {spec}{value} -d {_fish_text(help)}")
    return "\n".join(lines) + "\n"


def script(parser: argparse.ArgumentParser, shell: str, versions: list[str]) -> str:
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](parser, versions)
