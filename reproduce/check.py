"""Run the six figure scripts and compare their numbers with the stored references.

Usage::

    python -m reproduce.check [--scale paper|smoke] [--check | --record]
                              [--figures fig1,fig3] [--no-run] [--prepare-only]
                              [--workers N | --scheduler ADDRESS]

* ``--check`` (default) compares each figure's result (``figures/cache/<scale>/figN_result.npz``)
  with ``figures/reference/<scale>/figN.npz``: PASS when the parameters and seeds are the
  same, every map is within :data:`reproduce.common.TOLERANCE` of the reference's largest
  magnitude and the predicted classes are identical; FAIL otherwise; UNVERIFIED ("no reference
  recorded") when there is no reference — never a pass.
* ``--record`` runs the figures and stores their results as the new references of that scale.
* At paper scale the three zoo networks are fetched and converted first; offline this stops
  with the zoo's message (where to place the weights by hand) and points to ``--smoke``.

Each figure runs in its own process (``python -m reproduce.figN --scale …``) so that one
failure does not stop the others and the seconds are those of the whole script.

Exit status: 0 when every figure passed (or was recorded); 1 when a figure failed, crashed or
deviates; 2 when the zoo weights could not be fetched; 3 when nothing failed but at least one
figure has no reference (UNVERIFIED) — distinct from 0 so that an unverified run is never
mistaken for a verified one.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from preddiff.fileio import atomic_path

from . import common, paths

EXIT_OK, EXIT_FAIL, EXIT_FETCH, EXIT_UNVERIFIED = 0, 1, 2, 3

#: The environment the figure scripts run in, taken before a Dask cluster is started here:
#: Dask sets OMP_NUM_THREADS=1 (and the like) in its own process for its workers, which
#: would make the figure scripts' NumPy BLAS single-threaded (last-bit changes in the
#: sensitivity maps).
ENVIRON = dict(os.environ)


def run_figure(figure: str, scale: str, extra: list[str]) -> tuple[int, float]:
    """Run one figure script in a fresh interpreter; return (exit status, seconds)."""
    # through the launcher: a Ctrl-C during the script's imports is one line too
    command = [sys.executable, "-m", "reproduce.launch", f"reproduce.{figure}", "--scale",
               scale, *extra]
    print(f"== {figure}: {' '.join(command[1:])}", flush=True)
    env = dict(ENVIRON)
    env.setdefault("MPLBACKEND", "Agg")
    env[common.INTERRUPT_QUIET] = "1"  # on Ctrl-C this script says "interrupted", once
    start = time.perf_counter()
    with subprocess.Popen(command, cwd=paths.ROOT, env=env) as process:
        try:
            status = process.wait()
        except KeyboardInterrupt:
            # the figure script got the Ctrl-C too (or gets it now): let it save its progress
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            process.send_signal(signal.SIGINT)
            process.wait()
            raise
    return status, time.perf_counter() - start


def describe_result(result: Path) -> tuple[str, str]:
    """(models used, "reused/total" cached computations) from a result file, for the table."""
    try:
        _, _, meta = common.load_npz(result)
        cache = meta.get("cache", {})
        reused, computed = len(cache.get("reused", [])), len(cache.get("computed", []))
        return ",".join(sorted(meta["models"])) or "-", f"{reused}/{reused + computed}"
    except Exception:  # noqa: BLE001 - the table shows "?" for an unreadable file
        return "?", "?"


def clear_cache(scale: str) -> int:
    """Delete the cached computations of ``scale`` (not the converted models); return how many.

    Starting from an empty cache, rather than passing ``--force`` to each script, lets a
    figure still reuse what an earlier figure of the same run computed (Fig. 6 reuses Fig. 5's
    explanation of the cat).
    """
    folder = paths.cache_dir(scale)
    files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    for path in files:
        path.unlink()
    return len(files)


def record(result: Path, reference: Path) -> None:
    """Copy a result file to the references (atomically)."""
    with atomic_path(reference) as tmp:
        shutil.copyfile(result, tmp)


def format_table(rows: list[dict]) -> str:
    """The summary table: figure, seconds, models, max deviation, verdict."""
    header = ("figure", "seconds", "models", "from cache", "max rel. dev.", "verdict")
    lines = [header]
    for row in rows:
        dev = row["deviation"]
        lines.append((row["figure"], "-" if row["seconds"] is None else f"{row['seconds']:.1f}",
                      row["models"], row.get("cached", "-"),
                      "-" if dev is None else f"{dev:.2e}", row["verdict"]))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=common.SCALES, default="paper")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", dest="mode", action="store_const", const="check",
                      help="compare with the stored references (default)")
    mode.add_argument("--record", dest="mode", action="store_const", const="record",
                      help="store this run's results as the references of the scale")
    parser.add_argument("--figures", default=",".join(paths.FIGURE_NAMES),
                        help="comma-separated subset, e.g. fig1,fig3")
    parser.add_argument("--no-run", action="store_true",
                        help="compare the results already computed, without running the scripts")
    parser.add_argument("--prepare-only", action="store_true",
                        help="only fetch and convert the zoo models (paper scale)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--force", dest="force", action="store_true", default=None,
                       help="recompute everything from an empty cache (default at smoke scale, "
                       "so that a check tests the current code)")
    cache.add_argument("--reuse-cache", dest="force", action="store_false",
                       help="reuse cached computations with the same parameters (default at "
                       "paper scale, where they take hours; the table says how many)")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, default=None, metavar="N",
                         help="compute the explanations on a local Dask cluster of N worker "
                         "processes, shared by all figures (needs preddiff[cluster])")
    cluster.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="compute the explanations on a running Dask cluster")
    args = parser.parse_args(argv)
    if args.workers is not None or args.scheduler is not None:
        from preddiff.cluster import connect
        from preddiff.errors import PredDiffError

        try:
            with connect(workers=args.workers, scheduler=args.scheduler) as client:
                address = client.scheduler.address
                print(f"== explanations on the Dask cluster at {address}", flush=True)
                return _main(parser, args, ["--scheduler", address])
        except PredDiffError as exc:  # no Dask, or no cluster: one line
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_FAIL
    return _main(parser, args, [])


def _main(parser, args, cluster: list[str]) -> int:
    mode = args.mode or "check"
    figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = sorted(set(figures) - set(paths.FIGURE_NAMES))
    if unknown:
        parser.error(f"unknown figures {unknown}; choose from {', '.join(paths.FIGURE_NAMES)}")

    if args.scale == "paper" and not args.no_run:
        status = prepare_paper()
        if status or args.prepare_only:
            return status
    elif args.prepare_only:
        return EXIT_OK

    extra = ([] if sys.stderr.isatty() else ["--no-progress"]) + cluster
    force = args.force if args.force is not None else args.scale == "smoke"
    if force and not args.no_run:
        cleared = clear_cache(args.scale)
        print(f"== recomputing from an empty cache ({cleared} cached files removed)", flush=True)
    rows = []
    total = time.perf_counter()
    for figure in figures:
        seconds = None
        if not args.no_run:
            status, seconds = run_figure(figure, args.scale, extra)
        else:
            status = 0
        result = paths.result_path(figure, args.scale)
        reference = paths.reference_path(figure, args.scale)
        models, cached = describe_result(result) if result.is_file() else ("-", "-")
        row = {"figure": figure, "seconds": seconds, "models": models, "cached": cached,
               "deviation": None}
        if status != 0:
            row["verdict"], row["note"] = "ERROR", f"the script exited with status {status}"
        elif mode == "record":
            if not result.is_file():
                row["verdict"], row["note"] = "ERROR", f"no result file {result}"
            else:
                record(result, reference)
                row["verdict"], row["note"] = "RECORDED", str(reference.relative_to(paths.ROOT))
        else:
            cmp = common.compare(result, reference)
            row["verdict"], row["deviation"] = cmp.verdict, cmp.max_deviation
            row["note"] = "; ".join(cmp.messages)
        rows.append(row)
    elapsed = time.perf_counter() - total

    print()
    print(format_table(rows))
    for row in rows:
        if row.get("note") and row["verdict"] != "RECORDED":
            print(f"  {row['figure']}: {row['note']}")
    if force and not args.no_run:
        print("  (from cache: reused items were computed earlier in this same run; the cache "
              "was emptied first)")
    print(f"total {elapsed:.1f} s, scale {args.scale}; tolerance: max |result - reference| <= "
          f"{common.TOLERANCE:g} x max |reference| per map, identical predicted classes "
          f"(see reproduce/common.py TOLERANCE)")
    verdicts = {row["verdict"] for row in rows}
    if verdicts & {"FAIL", "ERROR"}:
        return EXIT_FAIL
    if common.VERDICT_UNVERIFIED in verdicts:
        print(f"UNVERIFIED: {common.NO_REFERENCE} for "
              f"{', '.join(r['figure'] for r in rows if r['verdict'] == common.VERDICT_UNVERIFIED)}"
              f" at {args.scale} scale; record them with --record once the results are trusted.")
        return EXIT_UNVERIFIED
    return EXIT_OK


def prepare_paper() -> int:
    """Fetch and convert the three zoo networks; on failure print why and how to go on."""
    from preddiff.errors import PredDiffError

    print("== fetching and converting the zoo models (alexnet, googlenet, vgg16)", flush=True)
    try:
        for path in common.prepare_zoo(progress=sys.stderr.isatty()):
            print(f"   {path}")
    except PredDiffError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        print("The paper-scale figures need the Caffe-zoo weights. Place them as described "
              "above (or run with network access), or run the offline reduced-scale "
              "reproduction instead: ./run_all.sh --smoke", file=sys.stderr)
        return EXIT_FETCH
    return EXIT_OK


if __name__ == "__main__":
    common.run_main(main, "python -m reproduce.check")
