"""Point every copy of the repository's GitHub address at your copy (maintainers, and anyone who publishes a fork).

    python tools/sync_repo_url.py                                        # the address of `git remote get-url origin`
    python tools/sync_repo_url.py https://github.com/you/musclebob       # or the one given
    python tools/sync_repo_url.py --check                                # list stale copies (exit 1 if any)

Run it once after publishing your own copy, so that the Open-in-Colab badges open it. Each notebook's first cell
holds a ``repo_url`` parameter, the one place a user changes the address by hand (no code edits); its default, the
notebooks' badges, the README's badges and ``REPO_URL`` below are copies this tool writes, and
``tests/test_notebooks.py`` fails when a copy is stale.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

# Written by `python tools/sync_repo_url.py [URL]` (with the notebooks' and README's copies); don't edit by hand.
REPO_URL = "https://github.com/musclebob/musclebob"
REPO_BRANCH = "main"

ROOT = Path(__file__).resolve().parent.parent  # the repository root (this file is tools/sync_repo_url.py)
NOTEBOOKS = ("01_train_musclebob.ipynb", "02_reward_plots.ipynb", "03_compare_models.ipynb")


def repo_slug(url: str = REPO_URL) -> str:
    """``owner/name`` of a GitHub URL."""
    m = re.match(r"^https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?$", url)
    if not m:
        raise ValueError(f"{url!r} is not a https://github.com/owner/name address")
    return m.group(1)


def github_url(remote: str) -> str:
    """The ``https://github.com/owner/name`` form of a GitHub remote (https, ``git@github.com:o/n.git``, ssh://).

    Anything else raises ``ValueError`` with one line: Colab opens notebooks from GitHub only."""
    remote = remote.strip()
    m = re.match(r"^(?:https?://(?:[^@/]+@)?|ssh://git@|git@)github\.com[:/]([\w.-]+)/([\w.-]+?)(?:\.git)?/?$", remote)
    if not m:
        raise ValueError(
            f"{remote!r} is not a GitHub repository address (Colab opens notebooks from GitHub); "
            "give one: python tools/sync_repo_url.py https://github.com/<owner>/<name>"
        )
    return f"https://github.com/{m.group(1)}/{m.group(2)}"


def origin_url(root: Path = ROOT) -> str:
    """``git remote get-url origin`` of the repository; ``ValueError`` with one line when there is none."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True, check=False
        )
    except OSError as err:
        raise ValueError(f"git could not run ({err.strerror or err}); give the address as an argument") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise ValueError(
            "this repository has no 'origin' remote; push it to GitHub first, or give the address: "
            "python tools/sync_repo_url.py https://github.com/<owner>/<name>"
        )
    return done.stdout.strip()


def colab_url(notebook: str, url: str = REPO_URL, branch: str = REPO_BRANCH) -> str:
    """The address that opens ``notebooks/<notebook>`` of the repository in Colab."""
    return f"https://colab.research.google.com/github/{repo_slug(url)}/blob/{branch}/notebooks/{notebook}"


def badge_markdown(notebook: str, url: str = REPO_URL) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook, url)})"


_COLAB_LINK = re.compile(
    r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/notebooks/"
    r"(?P<nb>[\w.-]+\.ipynb)"
)
# The copies of the address in code: REPO_URL here, the repo_url parameter in a notebook's first cell and the
# default in its bootstrap (`globals().get` of repo_url). In an .ipynb (JSON) their quotes are escaped.
_URL_COPY = re.compile(r'((?:REPO_URL|repo_url) = |\\?"repo_url\\?", )(\\?)"[^"\\]*\\?"')


def sync_text(text: str, url: str = REPO_URL) -> str:
    """``text`` with every Colab link and every copy of the address in code pointing at ``url``."""
    text = _COLAB_LINK.sub(lambda m: colab_url(m.group("nb"), url), text)
    return _URL_COPY.sub(lambda m: f'{m.group(1)}{m.group(2)}"{url}{m.group(2)}"', text)


def synced_files(root: Path = ROOT) -> list[Path]:
    """The files that carry copies of ``REPO_URL``: this tool, README and both halves of every notebook pair."""
    nb_dir = root / "notebooks"
    return (
        [root / "tools" / "sync_repo_url.py", root / "README.md"]
        + [nb_dir / n for n in NOTEBOOKS]
        + [nb_dir / n.replace(".ipynb", ".py") for n in NOTEBOOKS]
    )


def stale_copies(root: Path = ROOT, url: str = REPO_URL) -> list[Path]:
    """Files whose copy of the repository address differs from ``url`` (default: ``REPO_URL``)."""
    return [p for p in synced_files(root) if p.exists() and sync_text(p.read_text(), url) != p.read_text()]


def sync(url: str, root: Path = ROOT) -> list[Path]:
    """Point every copy of the address (``REPO_URL`` included) at ``url``; returns the files rewritten."""
    stale = stale_copies(root, url)
    for p in stale:
        p.write_text(sync_text(p.read_text(), url))
    return stale


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    """Point the notebooks' ``repo_url``, the badges and ``REPO_URL`` at URL (default: ``git remote get-url
    origin``). With ``--check``: list the stale copies instead."""
    parser = argparse.ArgumentParser(prog="python tools/sync_repo_url.py", description=main.__doc__)
    parser.add_argument("url", nargs="?", default="", metavar="URL", help="default: the 'origin' remote's address")
    parser.add_argument("--check", action="store_true", help="change nothing; list stale copies (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_copies(root)
        print("\n".join(f"stale: {p.relative_to(root)}" for p in stale) or f"all copies point at {REPO_URL}")
        return 1 if stale else 0
    try:
        url = github_url(args.url or origin_url(root))
    except ValueError as err:
        print(f"sync_repo_url: {err}", file=sys.stderr)
        return 2
    changed = sync(url, root)
    print("\n".join(f"updated {p.relative_to(root)}" for p in changed) or f"all copies already point at {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
