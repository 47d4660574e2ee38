"""The command line the per-network benchmark scripts share (``--models``, ``--rounds``,
``--out``), the command they record, and their records' writing."""
import argparse
import sys
from pathlib import Path


def parse(argv, doc: str, script: str, models, rounds: int, out: Path) -> tuple:
    """Parse ``argv`` (default: ``sys.argv[1:]``); a bad value exits with 2 and one line.

    Returns
    -------
    args : argparse.Namespace
        ``models`` (the string), ``rounds``, ``out``.
    names : list of str
        The networks asked for, in order.
    command : str
        ``python bench/<script> <arguments as given>``, for the record.
    """
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--models", default=",".join(models),
                   help=f"comma-separated, of {', '.join(models)} (default: all)")
    p.add_argument("--rounds", type=int, default=rounds, help="median of this many rounds")
    p.add_argument("--out", type=Path, default=out,
                   help="the text table; the JSON record goes beside it (.json)")
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    if not names or any(n not in models for n in names):
        p.error(f"--models {args.models!r}: choose among {', '.join(models)}")
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: at least 1")
    return args, names, command(script, argv)


def command(script: str, argv=None) -> str:
    """``python bench/<script> <arguments as given>`` (default: ``sys.argv[1:]``), for the
    record."""
    given = argv if argv is not None else sys.argv[1:]
    return f"python bench/{script}" + "".join(f" {arg}" for arg in given)


def write(out: Path, results: dict, text: str) -> None:
    """The JSON record beside the text table ``out``, both written whole or not at all, and
    the table on stdout."""
    import json

    from preddiff.fileio import atomic_write_text

    atomic_write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    atomic_write_text(out, text)
    print(text, end="")
