"""The `journey` command line: thin adapters around the worker, the sidecar and the core."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from journey.errors import JourneyError
from journey.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(bootstrap_servers=getattr(args, "bootstrap_servers", None))


def cmd_worker(args: argparse.Namespace) -> int:
    from journey.worker.runner import run_worker

    run_worker(_settings(args))
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from journey.kafka.admin import ensure_topics
    from journey.kafka.security import client_kwargs
    from journey.worker.topics import all_topic_specs

    settings = _settings(args)
    specs = all_topic_specs(settings)
    created = asyncio.run(ensure_topics(settings.bootstrap_servers, specs, client_options=client_kwargs(settings)))
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        print(f"{spec.name:40s} partitions={spec.partitions} {state}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from journey.kafka.security import client_kwargs
    from journey.sources.records import records_for_format
    from journey.sources.replay import publish

    settings = _settings(args)
    records, total = records_for_format(args.file, args.format)
    sent = asyncio.run(
        publish(
            settings.bootstrap_servers, args.topic or settings.topic_touchpoints, records,
            speed=args.speed, progress=not args.quiet, total=total, client_options=client_kwargs(settings),
        )
    )
    print(f"sent {sent} touchpoints from {args.file} to {args.topic or settings.topic_touchpoints}")
    return 0


def cmd_sidecar(args: argparse.Namespace) -> int:
    from journey.sidecar.app import run_sidecar

    run_sidecar(_settings(args))
    return 0


def cmd_churn(args: argparse.Namespace) -> int:
    from journey.churn.offline import run

    return run(args, _settings(args))


def cmd_dev(args: argparse.Namespace) -> int:
    from journey.dev import run_dev

    return run_dev(_settings(args), rate=args.rate, bad_every=args.bad_every, seconds=args.seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="journey", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka bootstrap servers (env JOURNEY_BOOTSTRAP_SERVERS, default 127.0.0.1:9092)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", parents=[common], help="run a journey worker (scale out: run more, same group)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("sidecar", parents=[common], help="serve live counts, funnel, channels, /metrics and the live page (port: JOURNEY_SIDECAR_PORT)")
    p.set_defaults(func=cmd_sidecar)

    p = sub.add_parser("topics", parents=[common], help="create the journey topics (idempotent)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("replay", parents=[common], help="publish a data set as touchpoints")
    p.add_argument("file", type=Path, help="the file (or, for completejourney, the directory)")
    p.add_argument("--format", required=True, choices=["jsonl", "cdnow", "completejourney"])
    p.add_argument("--speed", type=float, default=None, help="compress event time: 86400 = a day per second (default: as fast as possible)")
    p.add_argument("--topic", default=None, help="target topic (default: the touchpoints topic)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("churn", help="fit the churn model, or score every customer of a file as of a date")
    churn = p.add_subparsers(dest="churn_command", required=True)
    for name, helptext in (("fit", "fit the churn params from history"), ("score", "print CSV customer_id,score,level,reasons")):
        c = churn.add_parser(name, help=helptext)
        c.add_argument("file", type=Path, help="the file (or, for completejourney, the directory)")
        c.add_argument("--format", required=True, choices=["jsonl", "cdnow", "completejourney"])
        c.add_argument("--horizon-days", type=float, default=None, help="churn horizon H (default: the worker's, 90)")
        c.set_defaults(func=cmd_churn)
    churn.choices["fit"].add_argument("--until", required=True, help="last day of the history to fit on (YYYY-MM-DD)")
    churn.choices["fit"].add_argument("--out", type=Path, required=True, help="where to write the params file")
    churn.choices["fit"].add_argument("--time-unit-days", type=float, default=7.0, help="the model's time unit (7 = weeks)")
    churn.choices["fit"].add_argument("--no-calibration", action="store_true", help="plain BG/NBD: skip the backtest calibration")
    churn.choices["score"].add_argument("--as-of", required=True, help="YYYY-MM-DD (that whole UTC day) or an RFC 3339 time")
    churn.choices["score"].add_argument("--params", type=Path, default=None, help="params file (default: the worker's)")

    p = sub.add_parser("dev", parents=[common], help="the embedded default: broker, topics, worker, sidecar and a live feed")
    p.add_argument("--rate", type=float, default=float(os.environ.get("JOURNEY_DEV_RATE", 40)), help="touchpoints per second of the feed")
    p.add_argument("--bad-every", type=int, default=500, help="send a malformed event every N events (0: never)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")
    p.set_defaults(func=cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. A JourneyError (a bad setting, input or file; an unreachable broker)
    prints ``journey: <message>`` and returns 2; anything else propagates with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except JourneyError as exc:
        print(f"journey: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `journey churn score ... | head`: the reader left; not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
