"""Run many seeded cluster simulations, or replay one.

    python -m raftkv.testing.simulate --seeds 20000 --jobs 2
    python -m raftkv.testing.simulate --seed 1234 --save-history h.json
    python -m raftkv.testing.simulate --seeds 2000 --leases

A failing seed prints the exact command that replays it; a replay is bit-for-bit the
same run, since everything in it follows from the seed and the options.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from raftkv.raft.config import UnsafeFaults
from raftkv.testing.simulator import NEMESES, SimOptions, run_simulation


@dataclass(frozen=True, slots=True)
class SeedOutcome:
    seed: int
    error: str | None
    ops: int = 0
    ok: int = 0
    unknown: int = 0
    elections: int = 0
    committed: int = 0
    faults: tuple[tuple[str, int], ...] = ()


def run_seed(seed: int, options: SimOptions) -> SeedOutcome:
    try:
        result = run_simulation(seed, options)
    except Exception as exc:
        # Any exception fails the seed: a check that fired, or a crash inside the code
        # under test (which must not take the whole campaign down with it).
        where = "".join(traceback.format_exception(exc)[-3:]).strip()
        detail = "" if isinstance(exc, AssertionError) else f"\n{where}"
        return SeedOutcome(seed, f"{type(exc).__name__}: {exc}{detail}")
    stats = result.stats
    return SeedOutcome(
        seed,
        None,
        ops=stats.ops,
        ok=stats.ok,
        unknown=stats.unknown,
        elections=stats.elections,
        committed=stats.committed,
        faults=tuple(sorted(stats.faults.items())),
    )


def _run_packed(args: tuple[int, SimOptions]) -> SeedOutcome:
    return run_seed(*args)


def run_seeds(seeds: Sequence[int], options: SimOptions, jobs: int) -> Iterator[SeedOutcome]:
    work = [(seed, options) for seed in seeds]
    if jobs <= 1:
        yield from map(_run_packed, work)
        return
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap(_run_packed, work, chunksize=4)


def replay_command(seed: int, argv: Sequence[str]) -> str:
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--seeds", "--start", "--jobs", "--seed"):
            skip = True
            continue
        if arg.startswith(("--seeds=", "--start=", "--jobs=", "--seed=")):
            continue
        kept.append(arg)
    return " ".join(["python -m raftkv.testing.simulate", f"--seed {seed}", *kept])


def build_options(args: argparse.Namespace) -> SimOptions:
    options = SimOptions()
    nemeses = tuple(n for n in args.nemeses.split(",") if n) if args.nemeses else NEMESES
    unknown = set(nemeses) - set(NEMESES)
    if unknown:
        known = ", ".join(NEMESES)
        raise SystemExit(f"unknown nemeses: {', '.join(sorted(unknown))}; known: {known}")
    faults = UnsafeFaults(**{name: True for name in args.inject})
    return replace(
        options,
        nodes=args.nodes,
        ticks=args.ticks,
        clients=args.clients,
        nemeses=nemeses,
        faults=faults,
        leases=args.leases,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m raftkv.testing.simulate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=300, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="run (replay) this one seed only")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--nodes", type=int, default=3, help="voters at start (up to 5)")
    parser.add_argument("--ticks", type=int, default=600, help="ticks of faults and load")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument(
        "--nemeses", default="", help=f"comma-separated subset of: {','.join(NEMESES)}"
    )
    parser.add_argument(
        "--leases", action="store_true", help="run lease clients too, and check lease expiry"
    )
    parser.add_argument(
        "--inject",
        action="append",
        default=[],
        choices=["commit_earlier_terms", "ack_before_persist", "vote_without_log_check"],
        help="turn on a deliberate protocol bug (to see the checks fail)",
    )
    parser.add_argument("--save-history", help="with --seed: write the client history (JSON)")
    args = parser.parse_args(argv)
    options = build_options(args)

    if args.seed is not None:
        try:
            result = run_simulation(args.seed, options)
        except Exception as exc:
            print(f"seed {args.seed} FAILED: {type(exc).__name__}: {exc}")
            return 1
        if args.save_history:
            with open(args.save_history, "w", encoding="utf-8") as out:
                out.write(result.history.to_json(indent=1))
        print(f"seed {args.seed} passed: {result.stats}")
        return 0

    seeds = range(args.start, args.start + args.seeds)
    started = time.monotonic()
    totals: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    failures: list[SeedOutcome] = []
    for done, outcome in enumerate(run_seeds(seeds, options, args.jobs), start=1):
        if outcome.error is not None:
            failures.append(outcome)
            print(f"seed {outcome.seed} FAILED: {outcome.error}", flush=True)
            print(f"  replay: {replay_command(outcome.seed, argv)}", flush=True)
        else:
            totals.update(
                ops=outcome.ops,
                ok=outcome.ok,
                unknown=outcome.unknown,
                elections=outcome.elections,
                committed=outcome.committed,
            )
            faults.update(dict(outcome.faults))
        if done % 500 == 0:
            print(f"... {done} seeds, {len(failures)} failed", flush=True)
    elapsed = time.monotonic() - started
    print(
        f"{len(seeds)} seeds in {elapsed:.1f}s: {len(seeds) - len(failures)} passed, "
        f"{len(failures)} failed"
    )
    print(
        f"client operations: {totals['ops']} ({totals['ok']} answered, {totals['unknown']} "
        f"of unknown outcome); elections: {totals['elections']}; "
        f"committed entries: {totals['committed']}"
    )
    print("faults injected: " + ", ".join(f"{k}={v}" for k, v in sorted(faults.items())))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
