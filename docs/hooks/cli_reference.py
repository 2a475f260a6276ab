"""mkdocs hook: the CLI reference page, generated from ``xtrain.cli.build_parser()`` at build time.

The page (``cli.md``, never written to disk) is every subcommand's ``--help`` text, so the reference
cannot drift from the parser: a subcommand or flag added to the parser is in the next build.  mkdocs
runs ``on_files`` before it builds the navigation and checks links, so ``nav`` and the guides can
link to ``cli.md#xtrain-segment`` like any other page (strict mode fails a link to a missing anchor).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

PAGE = "cli.md"
WIDTH = 100  # help text width: fixed, so the page does not depend on the terminal that builds it
REPO = Path(__file__).resolve().parents[2]


def help_text(parser: argparse.ArgumentParser) -> str:
    """``parser.format_help()`` at WIDTH columns."""
    parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)
    return parser.format_help().rstrip()


def render(parser: argparse.ArgumentParser) -> str:
    """The Markdown page: the top-level help, then one section per subcommand (``## xtrain NAME``)."""
    commands = parser.get_default("subcommands")
    lines = ["# CLI reference", "",
             ("Generated from the argparse parser (`xtrain.cli.build_parser()`) when these docs are built; "
             "`xtrain COMMAND --help` prints the same text. Exit codes: 0 done, 2 bad input (one line on "
             "stderr naming the value and the fix), 3 interrupted or disk full during a resumable command "
             "(train, tune, segment, nightly: rerun with `--resume`)."), "",
             " · ".join(f"[{name}](#xtrain-{name})" for name in commands), "",
             "```text", help_text(parser), "```"]
    for name, sub in commands.items():
        lines += ["", f"## xtrain {name}", "", "```text", help_text(sub), "```"]
    return "\n".join(lines) + "\n"


def cli_page() -> str:
    """The page for this checkout's parser (its own xtrain first on the path, not another installed copy)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from xtrain.cli import build_parser

    return render(build_parser())


def on_files(files: Files, config) -> Files:
    if files.get_file_from_path(PAGE) is not None:
        raise ValueError(f"docs/{PAGE} is generated from the parser at build time; delete the file")
    files.append(File.generated(config, PAGE, content=cli_page()))
    return files
