"""``preddiff models``: list the zoo; ``preddiff models fetch NAME``: download weights."""
from __future__ import annotations

import argparse
import sys

ORDER = 10


def register(subparsers) -> None:
    """Add the ``models`` sub-command (with its ``fetch`` action) to the CLI."""
    parser = subparsers.add_parser(
        "models",
        help="list the model zoo, or download a network's weights",
        description="List the networks (weights size, whether present, where), or download "
        "and verify a network's Caffe weights with `preddiff models fetch NAME`.",
    )
    parser.add_argument(
        "--verify", action="store_true", help="check the sha1 of present weights (slower)"
    )
    parser.set_defaults(func=list_models)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    fetch = actions.add_parser(
        "fetch",
        help="download a network's weights into the cache",
        description="Download NAME's .caffemodel with a progress bar, verify its sha1 and "
        "store it in the cache ($PREDDIFF_HOME or the platform cache directory).",
    )
    fetch.add_argument("name", metavar="NAME", help="alexnet, googlenet, vgg16 or lenet")
    fetch.add_argument("--url",
                       help="download from this mirror instead (an http, https, ftp or file URL)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(func=fetch_model)


def _human_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _presence(name: str, verify: bool) -> str:
    from .. import zoo

    path = zoo.weights_path(name)
    if not path.is_file():
        return "no"
    expected = zoo.manifest(name)
    if path.stat().st_size != expected.size:
        return f"no (wrong size: {path.stat().st_size:,} bytes)"
    if verify:
        return "yes, sha1 ok" if zoo.is_present(name, verify=True) else "no (sha1 mismatch)"
    return "yes"


def list_models(args: argparse.Namespace) -> int:
    """Print a table: name, weights size, present, path."""
    from .. import zoo

    rows = [("name", "weights", "present", "path")]
    for name in zoo.MODEL_NAMES:
        m = zoo.manifest(name)
        presence = _presence(name, args.verify)
        if m.bundled:
            presence = f"{presence}, bundled"
        rows.append((name, _human_size(m.size), presence, str(zoo.weights_path(name))))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    return 0


def fetch_model(args: argparse.Namespace) -> int:
    """Download and verify one network's weights; print where they are."""
    from .. import zoo

    path = zoo.fetch(args.name, progress=not args.no_progress, url=args.url)
    print(f"{args.name}: {path}", file=sys.stdout)
    return 0
