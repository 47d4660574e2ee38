"""The documentation's promises that can be checked without building it: a smoke run of the
figures leaves the checkout clean, the README stays a short entry page whose links resolve,
and the command-line reference (rendered from the parser) covers every sub-command."""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the figure scripts live in the repository, not the package
    sys.path.insert(0, str(ROOT))

from reproduce import paths  # noqa: E402


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def _in_git_checkout() -> bool:
    return shutil.which("git") is not None and _git("rev-parse", "--show-toplevel").returncode == 0


def _smoke_outputs() -> list[Path]:
    """Every file ``./run_all.sh --smoke`` writes (figures with their JSON records of timings
    and platform, the evaluation's tables and plots, the cache)."""
    out = [paths.figure_stem(f, "smoke").with_suffix(s)
           for f in paths.FIGURE_NAMES for s in (".png", ".pdf", ".json")]
    out += [paths.figure_dir("smoke") / f"evaluation{s}"
            for s in (".md", ".csv", ".json", "_curves.png", "_randomisation.png")]
    out += [paths.cache_dir("smoke") / "fig1_result.npz"]
    return out


@pytest.mark.skipif(not _in_git_checkout(), reason="needs a git checkout")
def test_smoke_run_outputs_are_untracked_and_ignored():
    """``./run_all.sh --smoke`` rewrites its timings and platform on every run: none of what
    it writes may be a tracked file, or a user's checkout turns dirty (issue 18, point 8)."""
    outputs = [str(p.relative_to(ROOT)) for p in _smoke_outputs()]
    tracked = _git("ls-files", "--", *outputs).stdout.split()
    assert tracked == [], f"tracked files that ./run_all.sh --smoke rewrites: {tracked}"
    ignored = _git("check-ignore", "--no-index", "--", *outputs).stdout.split()
    assert sorted(ignored) == sorted(outputs), sorted(set(outputs) - set(ignored))


def test_readme_is_a_short_entry_page_whose_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t and not t.startswith("mailto:")]
    assert local, "the README links to the documentation pages"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert missing == []
    assert any(t.startswith("docs/") for t in local)


def _cli_help():
    spec = importlib.util.spec_from_file_location("cli_help",
                                                  ROOT / "docs" / "_ext" / "cli_help.py")
    module = importlib.util.module_from_spec(spec)
    pytest.importorskip("docutils")
    pytest.importorskip("sphinx")
    spec.loader.exec_module(module)
    return module


def test_cli_reference_renders_every_sub_command():
    from preddiff.cli import build_parser

    cli_help = _cli_help()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in sub.choices:
        assert f"preddiff-help:: {name}" in page or f"```{{preddiff-help}} {name}" in page, name
        text = cli_help.help_text(name)
        assert text.startswith(f"usage: preddiff {name}"), text[:80]
    with pytest.raises(ValueError, match="no sub-command"):
        cli_help.help_text("no-such-command")


def test_api_reference_lists_every_module():
    """A new module of the package gets its page in the API reference (docs/api/index.rst);
    the command modules are documented through their ``--help`` in docs/cli.md."""
    import pkgutil

    import preddiff

    names = [m.name for m in pkgutil.walk_packages(preddiff.__path__, "preddiff.")
             if m.name != "preddiff.__main__" and not m.name.startswith("preddiff.commands")]
    page = (ROOT / "docs" / "api" / "index.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s+(preddiff(?:\.\w+)+)\s*$", page, flags=re.M))
    assert sorted(set(names) - listed) == []


def test_explain_option_table_covers_every_option():
    """docs/cli.md explains each option of ``preddiff explain`` in prose with its default; a new
    option must get its row there (the rendered ``--help`` alone is not enough)."""
    from preddiff.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    explain = sub.choices["explain"]
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    table = page.split("## `preddiff explain`: every option", 1)[1].split("```{preddiff-help}")[0]
    options = [o for a in explain._actions for o in a.option_strings
               if o.startswith("--") and o != "--help"]
    missing = [o for o in options if not re.search(re.escape(o) + r"\b", table)]
    assert missing == []
