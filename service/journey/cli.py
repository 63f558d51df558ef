"""The `journey` command line: thin adapters around the worker, the sidecar and the core.

Every setting is a JOURNEY_* environment variable (`journey config --help` lists them all;
`journey config` shows the values in force and where each came from).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from journey.errors import JourneyError, UsageError
from journey.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(bootstrap_servers=getattr(args, "bootstrap_servers", None))


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("journey")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from journey import __version__

        return __version__


def cmd_worker(args: argparse.Namespace) -> int:
    from journey.worker.runner import run_worker

    run_worker(_settings(args))  # exits the process with the worker's exit code
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from journey.kafka.admin import ensure_topics
    from journey.kafka.security import client_options
    from journey.worker.topics import all_topic_specs

    settings = _settings(args)
    specs = all_topic_specs(settings)
    created = asyncio.run(ensure_topics(settings.bootstrap_servers, specs, client_options=client_options(settings)))
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        print(f"{spec.name:40s} partitions={spec.partitions} {state}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from journey.kafka.security import client_options
    from journey.sources.records import records_for_format
    from journey.sources.replay import publish

    settings = _settings(args)
    if args.skip < 0:
        raise UsageError(f"--skip must be 0 or more records, not {args.skip}")
    records, total = records_for_format(args.file, args.format)
    if args.skip:
        # The records come in the same order every time: resume after what a failed run got acknowledged.
        records = itertools.islice(records, args.skip, None)
        total = max(total - args.skip, 0) if total is not None else None
    sent = asyncio.run(
        publish(
            settings.bootstrap_servers, args.topic or settings.topic_touchpoints, records,
            speed=args.speed, progress=not args.quiet, total=total, client_options=client_options(settings),
            skipped=args.skip,
        )
    )
    skipped = f" after skipping the first {args.skip}" if args.skip else ""
    print(f"sent {sent} touchpoints from {args.file}{skipped} to {args.topic or settings.topic_touchpoints}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from journey.forget import request_forget

    settings = _settings(args)
    if settings.control_secret is None:
        print("journey: note: JOURNEY_CONTROL_SECRET is not set here, so the request is signed with the key derived from "
              "the app id; workers that run with a secret ignore it (journey_privacy_requests_total{outcome=\"unsigned\"})",
              file=sys.stderr)
    request_id = asyncio.run(request_forget(settings, args.customer_id, undo=args.undo, reason=args.reason, source="cli"))
    if args.undo:
        print(f"undo of the forget requested: request_id={request_id} (topic {settings.topic_privacy}); the worker owning "
              "the id lifts the suppression within seconds (nothing comes back: its next touchpoint starts a new journey)")
    else:
        print(f"forget requested: request_id={request_id} (topic {settings.topic_privacy}); the worker owning the id "
              "applies it within seconds and confirms it with customer_forgotten on that topic")
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

    settings = _settings(args)
    rate = args.rate if args.rate is not None else settings.dev_rate
    return run_dev(settings, rate=rate, bad_every=args.bad_every, seconds=args.seconds, identity=args.identity)


def cmd_config(args: argparse.Namespace) -> int:
    from journey.settings import describe, unknown_variables

    settings = _settings(args)
    options = ["bootstrap_servers"] if args.bootstrap_servers is not None else []
    rows = list(describe(settings, os.environ, options))
    unknown = unknown_variables(os.environ)
    if args.format == "json":
        print(json.dumps({
            "settings": {r.variable: {"value": r.value, "source": r.source, **({"secret": True} if r.secret else {})} for r in rows},
            "unknown_variables": unknown,
        }, indent=2))
        return 0
    if args.format == "env":
        for r in rows:
            if r.value != "(unset)" and (r.source != "default" or args.all):
                print(f"{r.variable}={r.value}")
        return 0
    width = max(len(r.variable) for r in rows)
    for r in rows:
        if r.source == "default" and not args.all:
            continue
        print(f"{r.variable:{width}}  {r.value}  ({r.source})")
    if not args.all:
        defaults = sum(r.source == "default" for r in rows)
        print(f"({defaults} more at their defaults: journey config --all shows every setting)")
    for name in unknown:
        print(f"warning: {name} is set but is no journey setting (a typo? see journey config --help); it is ignored",
              file=sys.stderr)
    return 0


def settings_epilog() -> str:
    """Every JOURNEY_* variable with its default and what it does (for `journey config --help`)."""
    from journey.settings import SECRET_FIELDS, describe

    lines = ["settings (environment variables; secrets are never printed):"]
    for row in describe(Settings(), {}):
        default = "unset" if row.value == "(unset)" else ("secret" if row.name in SECRET_FIELDS else row.value)
        if row.name in ("data_dir", "schemas_dir"):
            default = "the current directory" if row.name == "data_dir" else "schemas/ of the installation"
        lines.append(f"  {row.variable} (default: {default})")
        lines.extend(textwrap.wrap(row.description, width=88, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilogs' line breaks; shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    formats = ["jsonl", "cdnow", "completejourney"]
    format_help = ("the input's format: jsonl (one touchpoint per line), cdnow (the CDNOW purchase log) or "
                   "completejourney (the Complete Journey CSV directory)")
    parser = argparse.ArgumentParser(
        prog="journey", description=__doc__, formatter_class=_Formatter,
        epilog=textwrap.fill(
            "Exit codes: 0 done; 2 a setting, input or broker problem (the message says what to fix); 70 a worker "
            "stopped with work unfinished (whoever owns its partitions next replays it). `journey COMMAND --help` "
            "describes each command; `journey config --help` lists every JOURNEY_* setting.", width=88),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print journey's version and exit")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--bootstrap-servers",
        default=None,
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (overrides JOURNEY_BOOTSTRAP_SERVERS; default 127.0.0.1:9092)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, **kwargs: object) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=f"{summary}.\n\n{textwrap.dedent(description).strip()}",
                              formatter_class=_Formatter, **kwargs)  # type: ignore[arg-type]

    p = command("worker", "run a journey worker", """
        Consumes the touchpoints topic as a member of the consumer group JOURNEY_APP_ID, keeps each
        customer's state in RocksDB under JOURNEY_DATA_DIR and writes transitions, churn risk, pain
        points and live aggregates. Scale out by running more with the same JOURNEY_APP_ID (the topic's
        partitions bound how many do work). Serves /metrics, /healthz and /readyz on JOURNEY_WEB_PORT.
        SIGTERM stops it within JOURNEY_SHUTDOWN_TIMEOUT_S.""", parents=[common])
    p.set_defaults(func=cmd_worker)

    p = command("sidecar", "serve the live numbers over HTTP", """
        Live counts, funnel and channels merged from the workers' aggregates, the live page, /metrics,
        /healthz, /readyz and the customer lookup (forwarded to a worker), on
        JOURNEY_SIDECAR_HOST:JOURNEY_SIDECAR_PORT.""", parents=[common])
    p.set_defaults(func=cmd_sidecar)

    p = command("topics", "create the journey topics", """
        Creates every topic journey reads or writes (JOURNEY_PARTITIONS partitions,
        JOURNEY_REPLICATION_FACTOR replicas), the customer table's changelog included. Topics that
        exist are left as they are, so it is safe to run again.""", parents=[common])
    p.set_defaults(func=cmd_topics, one_shot=True)

    p = command("replay", "publish a data set as touchpoints", """
        Sends every record of a file to the touchpoints topic, as fast as Kafka takes them or at a
        multiple of their event time (--speed). The records and their event ids are the same on every
        run, but a worker drops a repeated event only while the customer still remembers it (their
        last 32 event ids and 16 orders): after a failed run, resume with --skip N (N: what it says
        was acknowledged) rather than replaying the whole file again.""", parents=[common])
    p.add_argument("file", type=Path, help="the file (or, for completejourney, the directory)")
    p.add_argument("--format", required=True, choices=formats, help=format_help)
    p.add_argument("--speed", type=float, default=None,
                   help="compress event time: 86400 = a day per second (default: as fast as possible)")
    p.add_argument("--topic", default=None, help="target topic (default: JOURNEY_TOPIC_TOUCHPOINTS)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--skip", type=int, default=0, metavar="N",
                   help="leave out the first N records (resume a run that failed after N were acknowledged)")
    p.set_defaults(func=cmd_replay, one_shot=True)

    p = command("forget", "forget a customer everywhere (GDPR art. 17), or lift a suppression with --undo", """
        Publishes a signed request on JOURNEY_TOPIC_PRIVACY (journey.privacy). The worker owning the
        customer deletes their state (changelog and store) and their linked anonymous ids, takes them
        out of the live numbers, publishes customer_forgotten there for downstream services, and drops
        every later touchpoint of those ids (counted in journey_suppressed_records_total). Needs the
        deployment's JOURNEY_CONTROL_SECRET (the workers ignore requests it did not sign).""", parents=[common])
    p.add_argument("customer_id", help="the id to forget (a customer id; an anonymous id works too)")
    p.add_argument("--reason", default=None, help="why (kept with the request on the privacy topic, for the audit trail)")
    p.add_argument("--undo", action="store_true",
                   help="lift the suppression of an id forgotten before (its later touchpoints count again; nothing comes back)")
    p.set_defaults(func=cmd_forget, one_shot=True)

    p = command("churn", "fit the churn model, or score every customer of a file", """
        The worker's churn code run over a file: `fit` learns the model's parameters from a purchase
        history, `score` prints every customer's churn risk as of a date.""")
    churn = p.add_subparsers(dest="churn_command", required=True, metavar="SUBCOMMAND")
    for name, summary, description in (
        ("fit", "fit the churn params from history",
         "Fits BG/NBD on the purchases up to --until, validates it and a learned layer out of time (with a "
         "calibration), and writes the params file the worker reads (JOURNEY_CHURN_PARAMS_FILE)."),
        ("score", "print CSV customer_id,score,level,reasons,reason_codes",
         "Scores every customer of the file as of --as-of with the worker's code and params."),
    ):
        c = churn.add_parser(name, help=summary, description=f"{summary}.\n\n{description}", formatter_class=_Formatter)
        c.add_argument("file", type=Path, help="the file (or, for completejourney, the directory)")
        c.add_argument("--format", required=True, choices=formats, help=format_help)
        c.add_argument("--horizon-days", type=float, default=None,
                       help="churn horizon H in days (default: JOURNEY_CHURN_HORIZON_DAYS, 90)")
        c.set_defaults(func=cmd_churn)
    churn.choices["fit"].add_argument("--until", required=True, help="last day of the history to fit on (YYYY-MM-DD)")
    churn.choices["fit"].add_argument("--out", type=Path, required=True, help="where to write the params file")
    churn.choices["fit"].add_argument("--time-unit-days", type=float, default=7.0, help="the model's time unit in days (7 = weeks)")
    churn.choices["fit"].add_argument("--no-calibration", action="store_true", help="plain BG/NBD: skip the out-of-time validation, the learned layer and the calibration")
    churn.choices["score"].add_argument("--as-of", required=True, help="YYYY-MM-DD (that whole UTC day) or an RFC 3339 time")
    churn.choices["score"].add_argument("--params", type=Path, default=None,
                                        help="params file (default: the worker's, JOURNEY_CHURN_PARAMS_FILE)")

    p = command("dev", "run everything locally: broker, topics, worker, sidecar and a live feed", """
        Starts the embedded Kafka-protocol broker (in memory), creates the topics, runs a worker and the
        sidecar as child processes, feeds generated journeys and prints what flows. Ctrl-C, SIGTERM or
        SIGHUP stops the children first, then the broker. Logs go to JOURNEY_DEV_DIR.""", parents=[common])
    p.add_argument("--rate", type=float, default=None, help="touchpoints per second of the feed (default: JOURNEY_DEV_RATE, 40; 0: no feed, for a journey replay of your own)")
    p.add_argument("--bad-every", type=int, default=500, help="send a malformed event every N events (0: never)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: run until stopped)")
    p.add_argument("--identity", action="store_true",
                   help="anonymous-first traffic: browsing before a login, two devices, guest and logged-out checkouts")
    p.set_defaults(func=cmd_dev)

    p = command("config", "print the effective configuration", """
        Every setting in force, where its value came from (environment, option or default) and
        secrets masked. JOURNEY_* variables that are no setting are warned about.""",
                parents=[common], epilog=settings_epilog())
    p.add_argument("--format", choices=["text", "json", "env"], default="text",
                   help="text (a table), json, or env (VARIABLE=value lines, secrets masked)")
    p.add_argument("--all", action="store_true", help="text and env: show the settings at their defaults too")
    p.set_defaults(func=cmd_config)
    return parser


def _bootstrap_noise(record: logging.LogRecord) -> bool:
    """False for aiokafka's `Unable connect to "host:port"` per bootstrap try: the one-shot
    commands say an unreachable broker in one line of their own. Its other lines stay (a node
    the cluster advertises but that does not answer, retries, errors)."""
    return not (isinstance(record.msg, str) and record.msg.startswith('Unable connect to "'))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. A JourneyError (a bad setting, input or file; an unreachable broker)
    prints ``journey: <message>`` and returns 2; anything else propagates with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "one_shot", False):
        logging.getLogger("aiokafka").addFilter(_bootstrap_noise)
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
