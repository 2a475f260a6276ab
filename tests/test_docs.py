"""The README and docs/: the mkdocs build (strict), relative links, the generated CLI reference, the test command.

mkdocs.yml, docs/ and docs/hooks/cli_reference.py are what these test; no Ray, no data.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

from xtrain.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^(```|~~~)")


def cli_hook():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks (a '# comment' in bash is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(text: str) -> set[str]:
    """Heading ids as Python-Markdown's toc (mkdocs) makes them; the same as GitHub's for plain ASCII headings."""
    return {slugify(m.group(1).replace("`", ""), "-") for line in prose(text) if (m := re.match(r"#+\s+(.*)", line))}


def page_text(path: Path) -> str | None:
    """A link target's Markdown (docs/cli.md exists only in the build: rendered here), "" for another file,
    None when it does not exist."""
    if path == DOCS / "cli.md":
        return cli_hook().render(build_parser())
    if not path.exists():
        return None
    return path.read_text() if path.suffix == ".md" else ""  # an image or a folder: that it exists is enough


def test_mkdocs_build_strict_has_the_cli_reference(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(site)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    html = (site / "cli" / "index.html").read_text()
    for name in build_parser().get_default("subcommands"):
        assert f'id="xtrain-{name}"' in html, name  # a section per subcommand, with its anchor
    assert "--normalisation" in html and "--resume" in html  # the options themselves, not only the names
    assert not (DOCS / "cli.md").exists()  # generated in memory, never written into the sources
    assert not list(site.rglob("*.py"))  # the hook and the screenshot script are not published


def test_cli_reference_names_every_subcommand_with_its_help():
    parser = build_parser()
    page = cli_hook().render(parser)
    commands = parser.get_default("subcommands")
    assert set(commands) >= {"ingest", "synth", "train", "tune", "segment", "nightly", "evaluate", "baseline",
                             "compare", "upgrade", "demo"}
    headings = re.findall(r"^## xtrain (\S+)$", page, re.MULTILINE)
    assert headings == list(commands)  # every subcommand, once, in the parser's order
    for name, sub in commands.items():
        section = page.split(f"## xtrain {name}\n", 1)[1].split("\n## xtrain ", 1)[0]
        assert f"usage: xtrain {name}" in section
        for option in re.findall(r"(--[a-z][a-z-]+)", sub.format_usage()):
            assert option in section, (name, option)  # every flag of the parser is on its page


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in PAGES:
        text = page.read_text()
        for line in prose(text):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                dest_text = page_text(dest)
                if dest_text is None:
                    broken.append(f"{page.name}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest_text):
                    broken.append(f"{page.name}: {target} (no heading '#{anchor}')")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_name_no_machine_paths(page):
    text = page.read_text()
    assert "/work/" not in text
    assert not [t for t in LINK.findall(text) if t.startswith("/")]  # relative links only


def test_readme_test_command_is_the_ci_command():
    readme = REPO.joinpath("README.md").read_text()
    block = readme.split("## Run the tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    ci = REPO.joinpath(".ci", "run").read_text().rstrip().splitlines()[-1]
    assert block == ci


CODE_PATH = re.compile(r"(?<![\w/.-])((?:xtrain|bench|configs|slurm|jobs|tests|docs|\.ci)/[\w./-]*\w/?)")
DOTTED = re.compile(r"(?<![\w.])xtrain(?:\.\w+)+")
# keys of the outputs' "xtrain" attributes and the exported TorchScript's extra file, not Python names
ATTRIBUTE_KEYS = ("xtrain.source.", "xtrain.json")


def python_name_exists(dotted: str) -> bool:
    """'xtrain.a.b.name': the longest prefix that is a module file of this tree, then the rest defined in it
    (read as text, not imported: a package's lazy __init__ names what it exports)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:i])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if source.is_file():
            rest = parts[i:]
            return not rest or re.search(rf"\b{re.escape(rest[0])}\b", source.read_text()) is not None
    return False


def test_the_files_and_python_names_the_docs_mention_exist():
    """Docs that name a module, a function, a config or a script that moved or went away fail here."""
    missing = []
    for page in PAGES:
        text = page.read_text()
        missing += [f"{page.name}: {path}" for path in sorted(set(CODE_PATH.findall(text)))
                    if not (REPO / path).exists() and path != "docs/cli.md"]
        missing += [f"{page.name}: {name}" for name in sorted(set(DOTTED.findall(text)))
                    if not name.startswith(ATTRIBUTE_KEYS) and not python_name_exists(name)]
    assert not missing, missing
