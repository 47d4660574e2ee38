"""``.. preddiff-help:: [SUBCOMMAND ...]``: the ``--help`` text of ``preddiff [SUBCOMMAND ...]``.

The text comes from :func:`preddiff.cli.build_parser` when the documentation is built, so the
command-line reference cannot drift from the options the program accepts.
"""
from __future__ import annotations

import argparse
import os

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def help_text(command: str | None) -> str:
    """The ``--help`` text of ``preddiff`` or of a sub-command (``"explain"``, ``"models
    fetch"``), 92 columns wide."""
    from preddiff.cli import build_parser

    os.environ["COLUMNS"] = "92"  # argparse wraps to $COLUMNS
    parser = build_parser()
    for word in (command or "").split():
        sub = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not sub or word not in sub[0].choices:
            known = sorted(sub[0].choices) if sub else []
            raise ValueError(f"preddiff has no sub-command {command!r} (at {word!r}: {known})")
        parser = sub[0].choices[word]
    return parser.format_help()


class PreddiffHelp(SphinxDirective):
    optional_arguments = 1
    final_argument_whitespace = True
    has_content = False

    def run(self):
        command = self.arguments[0] if self.arguments else None
        try:
            text = help_text(command)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("preddiff-help", PreddiffHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
