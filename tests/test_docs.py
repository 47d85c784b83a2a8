"""The README and docs/ as a reader meets them: the README stays one page, every relative link (and #anchor) leads
somewhere, and every command of the two scripts shown in them is one their parsers accept."""

import re
import shlex
from pathlib import Path

import pytest

import test_musclebob
from musclebob_helpers.cli import _build_train_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 15 * 1024  # one page for a newcomer (TRL's README is 8.6 KB, nanoGPT's 13.5 KB)

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target), ![alt](target), and a badge's outer link alike
SCRIPTS = ("train_musclebob_improved.py", "test_musclebob.py")


def prose(text: str) -> str:
    """The page without its fenced code blocks (a `](x)` in code is not a link, a `#` line not a heading)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation (backticks, dots, colons, ...) dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(page.read_text()), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeated headings
    return found


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_the_readme_is_one_page():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes: move reference material into docs/ (limit {README_LIMIT})"


def test_the_docs_pages_are_all_linked_from_the_readme():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in relative_links(README)}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"{page.relative_to(ROOT)} is not in the README's map of docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    links = relative_links(page)
    for target in links:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.relative_to(ROOT)}: the link {target!r} leads nowhere ({dest} is missing)"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), (
                f"{page.relative_to(ROOT)}: the link {target!r} names no heading of {dest.name} "
                f"(its anchors: {sorted(anchors(dest))})"
            )


def test_the_link_checker_sees_a_broken_link(tmp_path):
    """The checks above can fail: a missing file and a missing heading are both found."""
    (tmp_path / "a.md").write_text("# Title\n\n## The `b.py` part\n\n[x](b.md) [y](#the-bpy-part) [z](#nope)\n")
    targets = relative_links(tmp_path / "a.md")
    assert targets == ["b.md", "#the-bpy-part", "#nope"]
    assert not (tmp_path / "b.md").exists()
    assert anchors(tmp_path / "a.md") == {"title", "the-bpy-part"}


def commands(text: str) -> list[list[str]]:
    """Every command of the two scripts in ``text``: in code blocks (line continuations joined, comments dropped,
    `&&` and `;` split) and in inline code. Returns each one's words from the script's name on; an
    `accelerate launch ... train_musclebob_improved.py ...` line counts by its script's part."""
    found = []
    lines = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`([^`\n]+)`", prose(text))
    for line in lines:
        if not any(s in line for s in SCRIPTS):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # not shell (a sentence quoting a flag)
        part: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "||"):
                if part and part[0] in ("python", "python3", "accelerate"):
                    script = next((i for i, w in enumerate(part) if w.endswith(SCRIPTS)), None)
                    if script is not None:
                        found.append(part[script:])
                part = []
            else:
                part.append(word)
    return found


def parser_for(script: str):
    if script.endswith("train_musclebob_improved.py"):
        return _build_train_parser("train_musclebob_improved.py", "docs")
    return test_musclebob.build_parser()


def all_commands() -> list[tuple[str, list[str]]]:
    return [(page.relative_to(ROOT).as_posix(), cmd) for page in PAGES for cmd in commands(page.read_text())]


def test_the_readme_shows_both_scripts():
    shown = {cmd[0] for cmd in commands(README.read_text())}
    assert shown == set(SCRIPTS), shown


@pytest.mark.parametrize("where, command", all_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_shown_command_parses(where, command):
    try:
        parser_for(command[0]).parse_args(command[1:])
    except SystemExit as err:
        pytest.fail(f"{where}: `{shlex.join(command)}` does not parse (exit {err.code}); see the line above")


def test_a_command_that_does_not_parse_is_found(capsys):
    """The extraction and the parse above can fail: a typo'd flag in a code block, after a line continuation and
    before a comment, is caught."""
    text = "```bash\npython train_musclebob_improved.py --model tiny \\\n    --epochz 3  # a typo\n```\n"
    [command] = commands(text)
    assert command == ["train_musclebob_improved.py", "--model", "tiny", "--epochz", "3"]
    with pytest.raises(SystemExit) as info:
        parser_for(command[0]).parse_args(command[1:])
    assert info.value.code == 2 and "--epochz" in capsys.readouterr().err
