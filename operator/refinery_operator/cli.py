"""`refinery`: run a pipeline locally, validate manifests, print the CRD, run the operator.

    refinery run examples/tiny-chat.yaml            # local mode, no cluster
    refinery validate examples/*.yaml
    refinery validate --data examples/tiny-chat.yaml   # also fetch every source and check every stage's inputs
    refinery crd > crds/trainingpipelines.refinery.dev.yaml
    refinery operator [--namespace NS ...] [--liveness URL]  # the kopf operator (needs the operator extra)
    refinery export runs/tiny-chat --stage rlhf --to exports/tiny-chat   # model + model card (or s3://, hf://)
    refinery chat runs/tiny-chat [--stage rlhf] [--prompt "What does the cow say?"]
    refinery serve-manifest s3://models/tiny-chat [--kserve]           # vLLM Deployment + Service YAML
    refinery get | describe tp/NAME | logs NAME STAGE -f | wait NAME | suspend | resume | delete NAME
                                                    # a cluster's pipelines, or --local-workdir runs (verbs.py)

Heavy imports (kopf, torch) happen only inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial
from pathlib import Path


def cmd_crd(args: argparse.Namespace) -> int:
    from refinery.api.crd import render

    text = render()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from refinery.api.load import InvalidManifest, load_pipelines

    failed = 0
    for path in args.files:
        try:
            pipelines = load_pipelines(path)
        except InvalidManifest as err:
            failed += 1
            print(err, file=sys.stderr)
            continue
        problems = [p for p in (check_data(args, path, p) for p in pipelines) if p] if args.data else []
        if problems:
            failed += 1
            print("\n".join(problems), file=sys.stderr)
        else:
            print(f"{path}: ok ({', '.join(p.metadata.name for p in pipelines)})" + (", inputs checked" if args.data else ""))
    return 1 if failed else 0


def check_data(args: argparse.Namespace, manifest: str, pipeline) -> str | None:
    """What `refinery run` checks before its first stage: every remote source fetched (into the
    work folder, where a later run reuses it) and every stage's inputs read. None when all is well."""
    from refinery.core.naming import pipeline_root
    from .local.initializer import run_initializer
    from .local.runner import trainer_environment

    root = Path(pipeline_root(str(Path(args.workdir).resolve()), None, pipeline.metadata.name))
    data_root = Path(args.data_root or Path(manifest).parent).resolve()
    result = run_initializer(pipeline, root, data_root, trainer_environment())
    if result.phase == "Succeeded":
        return None
    return f"{manifest}: pipeline {pipeline.metadata.name!r}: {result.reason}: {result.message}"


def cmd_run(args: argparse.Namespace) -> int:
    from . import metrics
    from refinery.api.load import InvalidManifest, load_pipelines
    from .local.runner import run_local
    from .local.serve import LOCAL_NAMESPACE, serve_metrics

    try:
        pipelines = load_pipelines(args.manifest)
        port = local_metrics_port(args.metrics_port)
    except InvalidManifest as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"error: ${metrics.PORT_ENV} must be a port number, 0-65535 (0: no metrics)", file=sys.stderr)
        return 2
    data_root = Path(args.data_root or Path(args.manifest).resolve().parent)
    stop_on_sigterm()
    endpoint = serve_metrics(metrics.OPERATOR.registry, port)  # prints its URL once
    ok = True
    try:
        for pipeline in pipelines:
            record = partial(metrics.record_pipeline, LOCAL_NAMESPACE, pipeline.metadata.name, spec=pipeline.spec)
            ok &= run_local(pipeline, Path(args.workdir), data_root, show_progress=not args.quiet, on_status=record)
    finally:
        if endpoint is not None:
            endpoint.close()
    return 0 if ok else 1


def stop_on_sigterm() -> None:
    """SIGTERM stops a local run as Ctrl-C does: its stages save a checkpoint and stop, and the same
    command resumes it (`Client.local(...).suspend` sends it; so does `kill PID`)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def local_metrics_port(flag: int | None) -> int | None:
    """--metrics-port, else $REFINERY_METRICS_PORT, else local mode's default; None when 0 (off).
    ValueError for a variable that is no port."""
    from .local.serve import DEFAULT_PORT
    from .metrics import port_from_environment

    port = flag if flag is not None else port_from_environment(DEFAULT_PORT)
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(port)
    return port or None


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (for --metrics-port, 0 turns metrics off); ValueError otherwise."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return port


def cmd_operator(args: argparse.Namespace) -> int:
    from .handlers import run_operator

    run_operator(args.namespace or [], liveness_endpoint=args.liveness, verbose=args.verbose)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .local.finished import FinishedRun, NotARun

    try:
        run = FinishedRun.load(Path(args.run))
        stage = args.stage or run.default_stage()
        run.model_of(stage)  # refuses a stage without a final model
    except NotARun as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from refinery_trainer.errors import StageError
    from refinery_trainer.stages.export import export_model

    to = args.to if "://" in args.to else str(Path(args.to).resolve())
    try:
        figures, where = export_model(run.pipeline.metadata.name, run.pipeline.spec, stage, run.outputs(), run.data_root, to,
                               run.root, private=not args.public)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported {stage} ({int(figures['files'])} files, {int(figures['bytes'])} bytes) to {where}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .local.finished import FinishedRun, NotARun

    folder = Path(args.folder)
    template = args.template
    try:
        if (folder / "status.json").exists():
            run = FinishedRun.load(folder)
            stage = args.stage or run.default_stage()
            model_dir, name = run.model_of(stage), f"{run.pipeline.metadata.name}/{stage}"
            if template == "auto":
                template = "chat" if run.trained_on_chats(stage) else "plain"
        else:
            model_dir, name = folder, str(folder)
            template = "chat" if template == "auto" else template
    except NotARun as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from refinery_trainer.chat import ChatSession, interactive
    from refinery_trainer.errors import ModelError

    try:
        session = ChatSession.load(model_dir, template=template, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.prompt is not None:
        session.reply(args.prompt, stream=sys.stdout)
        sys.stdout.write("\n")
        return 0
    return interactive(session, name)


def cmd_serve_manifest(args: argparse.Namespace) -> int:
    import yaml

    from .serving import ServeOptions, kserve_manifest, vllm_manifests

    opts = ServeOptions(name=args.name, model_uri=args.model_uri, namespace=args.namespace, gpus=args.gpus,
                        credentials_secret=args.credentials_secret, service_account=args.service_account,
                        max_model_len=args.max_model_len, **({"image": args.image} if args.image else {}))
    try:
        objects = [kserve_manifest(opts)] if args.kserve else vllm_manifests(opts)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .verbs import EXIT_CODES, add_verbs

    parser = argparse.ArgumentParser(prog="refinery", description=__doc__.split("\n\n")[0], epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_verbs(sub)

    run = sub.add_parser("run", help="run a pipeline on this machine (local mode)")
    run.add_argument("manifest", help="a TrainingPipeline YAML file")
    run.add_argument("--workdir", default="runs", help="local folder standing in for the volume (default: ./runs)")
    run.add_argument("--data-root", help="folder relative data paths resolve against (default: the manifest's folder)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--metrics-port", type=port_number, metavar="PORT",
                     help="serve the pipeline's metrics on 127.0.0.1:PORT/metrics (default: $REFINERY_METRICS_PORT, "
                          "else 8000; a taken port falls back to a free one; 0: off)")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check manifests without a cluster; print every problem with its field")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--data", action="store_true",
                          help="also fetch every remote source and check every stage's inputs (needs the trainer extra)")
    validate.add_argument("--workdir", default="runs", help="with --data: where sources are fetched to (default: ./runs)")
    validate.add_argument("--data-root", help="with --data: folder relative paths resolve against (default: the manifest's)")
    validate.set_defaults(func=cmd_validate)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the API models")
    crd.add_argument("-o", "--output", help="write to this file instead of stdout")
    crd.set_defaults(func=cmd_crd)

    export = sub.add_parser("export", help="copy a local run's stage model with a generated model card")
    export.add_argument("run", help="a local run's pipeline folder (the one holding status.json), e.g. runs/tiny-chat")
    export.add_argument("--stage", help="the stage to export (default: spec.export.stage, else the last model stage)")
    export.add_argument("--to", required=True, help="a folder, s3://bucket/prefix or hf://org/name")
    export.add_argument("--public", action="store_true", help="hf://: create the repo public (default: private)")
    export.set_defaults(func=cmd_export)

    chat = sub.add_parser("chat", help="talk to a stage's model in the terminal")
    chat.add_argument("folder", help="a local run's pipeline folder (e.g. runs/tiny-chat) or a model folder")
    chat.add_argument("--stage", help="the stage whose model answers (default: the exported stage, else the last model stage)")
    chat.add_argument("--prompt", help="answer this one prompt and exit (scriptable)")
    chat.add_argument("--template", choices=("auto", "chat", "plain"), default="auto",
                      help="chat: the tokenizer's chat template, multi-turn; plain: the text as is, as models trained "
                           "on plain prompts saw it; auto (default): chat when the stage's lineage trained on chats "
                           "(`messages`), else plain")
    chat.add_argument("--max-new-tokens", type=int, default=64)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    chat.set_defaults(func=cmd_chat)

    serve = sub.add_parser("serve-manifest", help="print a vLLM Deployment + Service (or KServe InferenceService) YAML")
    serve.add_argument("model_uri", help="the exported model: s3://bucket/prefix, hf://org/name or pvc://claim/path")
    serve.add_argument("--name", default="refinery-model", help="Deployment/Service name and served model name")
    serve.add_argument("--namespace")
    serve.add_argument("--gpus", type=int, default=1, help="nvidia.com/gpu per replica (default 1)")
    serve.add_argument("--image", help="the vLLM image (default: a pinned vllm/vllm-openai)")
    serve.add_argument("--max-model-len", type=int)
    serve.add_argument("--credentials-secret", help="a Secret whose keys (AWS_*, HF_TOKEN) become the pod's environment")
    serve.add_argument("--service-account", help="--kserve: the ServiceAccount holding storage credentials")
    serve.add_argument("--kserve", action="store_true", help="print a KServe InferenceService instead")
    serve.set_defaults(func=cmd_serve_manifest)

    op = sub.add_parser("operator", help="run the Kubernetes operator (the operator image's entrypoint)")
    scope = op.add_mutually_exclusive_group()
    # kopf's own flag names, so the chart's args work for both; unlike `kopf run --namespace`, the
    # namespaces also reach the handlers, which list Jobs and ConfigMaps only there (a Role in one
    # namespace allows no cluster-wide list).
    scope.add_argument("-n", "--namespace", action="append", metavar="NS",
                       help="watch only this namespace (repeatable; default: all namespaces)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    op.add_argument("--liveness", metavar="URL", help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz")
    op.add_argument("--verbose", action="store_true", help="log every handler step")
    op.set_defaults(func=cmd_operator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
