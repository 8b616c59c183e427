"""kubectl-style verbs on pipelines, on a cluster or in a local work folder, through `refinery.Client`.

    refinery get [NAME] [-o yaml|json]          refinery describe NAME|tp/NAME
    refinery logs NAME STAGE [-f]               refinery wait NAME [--for Succeeded] [--timeout 30m]
    refinery suspend|resume|delete NAME
    kubectl refinery describe tp/tiny-chat      # the same, as a kubectl plugin (kubectl-refinery)

Every verb takes `--kubeconfig`, `--context` and `-n/--namespace` (kubectl's meaning), or
`--local-workdir DIR` for local mode's runs (`refinery run --workdir DIR`, `Client.local`).
Errors are one line on stderr with an exit code per kind (EXIT_CODES, shown in `refinery --help`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_NO_LOGS, EXIT_TIMEOUT = 1, 2, 3, 4, 5, 6
EXIT_CODES = """exit codes:
  0  done (wait: the pipeline reached the phase asked for)
  1  failed (wait: the pipeline ended in another phase, e.g. Failed; run: the pipeline failed; any other error)
  2  usage error or invalid manifest
  3  not found: no such pipeline (or stage) in the namespace or work folder
  4  unreachable: no kubeconfig, an unknown context, or an API server that does not answer
  5  no logs: the stage has not started, or its attempt's pod is gone
  6  timed out (wait --timeout)"""
KINDS = ("tp", "trainingpipeline", "trainingpipelines", "trainingpipeline.refinery.dev", "trainingpipelines.refinery.dev")
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


def pipeline_name(text: str) -> str:
    """`tiny-chat`, `tp/tiny-chat` or `trainingpipelines.refinery.dev/tiny-chat` -> `tiny-chat`."""
    kind, slash, name = text.rpartition("/")
    if slash and kind.lower() not in KINDS:
        raise argparse.ArgumentTypeError(f"{text!r}: not a TrainingPipeline (use NAME or tp/NAME)")
    return name


def duration(text: str) -> float:
    """Seconds, or kubectl's durations: 90, 90s, 10m, 2h, 1h30m."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or parts is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 90s, 10m or 2h")
    h, m, s = (int(p or 0) for p in parts.groups())
    return h * 3600 + m * 60 + s


def add_verbs(sub: argparse._SubParsersAction) -> None:
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_argument_group("where the pipelines are")
    group.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    group.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    group.add_argument("--local-workdir", metavar="DIR", help="local mode's runs in this work folder instead of a cluster")

    def verb(name: str, help_: str, func: Callable[[argparse.Namespace], int], named: bool = True):
        parser = sub.add_parser(name, parents=[where], help=help_, epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        if named:
            parser.add_argument("name", type=pipeline_name, help="the pipeline: NAME or tp/NAME")
        parser.set_defaults(func=lambda args: run_verb(func, args))
        return parser

    get = verb("get", "list pipelines (or one) with kubectl's columns", cmd_get, named=False)
    get.add_argument("name", nargs="?", type=pipeline_name, help="one pipeline (default: all)")
    get.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    verb("describe", "a pipeline's stages, conditions, failures, lineage, sources, eval scores and events", cmd_describe)
    logs = verb("logs", "the log of a stage's current attempt", cmd_logs)
    logs.add_argument("stage")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the attempt ends")
    wait = verb("wait", "wait until a pipeline reaches a phase", cmd_wait)
    wait.add_argument("--for", dest="until", choices=PHASES, default="Succeeded", help="the phase (default: Succeeded)")
    wait.add_argument("--timeout", type=duration, help="give up after this long (90s, 10m, 2h; default: never)")
    wait.add_argument("--quiet", action="store_true", help="no progress bar")
    verb("suspend", "stop a pipeline's running stages after a checkpoint (spec.suspend: true)", cmd_suspend)
    verb("resume", "resume a suspended pipeline from its checkpoints", cmd_resume)
    verb("delete", "delete a pipeline and what it owns (locally: stop it and remove its folder)", cmd_delete)


def run_verb(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Each error kind -> one line on stderr and its exit code."""
    from refinery.client import ClientError, NoLogs, NotFound, PipelineFailed, Unreachable, WaitTimeout

    codes = ((NotFound, EXIT_NOT_FOUND), (Unreachable, EXIT_UNREACHABLE), (NoLogs, EXIT_NO_LOGS),
             (WaitTimeout, EXIT_TIMEOUT), (PipelineFailed, EXIT_FAILED), (ClientError, EXIT_FAILED))
    try:
        return func(args)
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return next(code for kind, code in codes if isinstance(err, kind))
    except KeyboardInterrupt:
        return 130


def client_for(args: argparse.Namespace):
    from refinery.client import Client

    if args.local_workdir:
        return Client.local(args.local_workdir)
    return Client(kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace)


def cmd_get(args: argparse.Namespace) -> int:
    from refinery.client.render import pipelines_table

    client = client_for(args)
    pipelines = [client.get(args.name)] if args.name else client.list()
    if args.output == "table":
        if not pipelines:
            print(f"No pipelines found in {client.backend.where}.", file=sys.stderr)
            return 0
        print(pipelines_table(pipelines))
        return 0
    objects = [p.model_dump(by_alias=True, exclude_none=True, mode="json") for p in pipelines]
    one = objects[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": objects}
    if args.output == "json":
        print(json.dumps(one, indent=2))
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(one, sort_keys=False))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from refinery.client.render import describe

    client = client_for(args)
    pipeline = client.get(args.name)
    sys.stdout.write(describe(pipeline, client.events(args.name)))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    for line in client_for(args).logs(args.name, args.stage, follow=args.follow):
        print(line, flush=args.follow)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    client = client_for(args)
    client.wait(args.name, until=args.until, timeout=args.timeout, progress=not args.quiet and sys.stderr.isatty())
    print(f"trainingpipeline.refinery.dev/{args.name} condition met (phase {args.until})")
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    client_for(args).suspend(args.name)
    print(f"trainingpipeline.refinery.dev/{args.name} suspended")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    client_for(args).resume(args.name)
    print(f"trainingpipeline.refinery.dev/{args.name} resumed")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    client_for(args).delete(args.name)
    print(f"trainingpipeline.refinery.dev/{args.name} deleted")
    return 0
