"""`refinery-train launch`: wait until rank 0's pod name resolves, then become the real command.

    refinery-train launch --wait-for train-sft-1-0.train-sft-1 --timeout 600 -- \\
        torchrun --nnodes=2 --nproc_per_node=1 --node_rank=0 --master_addr=train-sft-1-0.train-sft-1 ... \\
        -m refinery_trainer run --config /etc/refinery/stage.yaml

The pods of a multi-node stage start in any order, and a pod's DNS record under the headless
Service appears only once the pod has an IP. torchrun's static rendezvous resolves
`--master_addr` once and gives up, so a pod that starts before pod 0 is published would fail
the whole attempt (and spend a retry). Every pod, pod 0 included (its torchrun agent also
connects to the address as a client), therefore waits here until the name resolves — bounded
by `--timeout`, logging what it waits for — and then runs the command as its child.

Why a child and not `exec`: the container's first process is PID 1, and the kernel drops every
signal PID 1 has no handler for. torchrun installs its SIGTERM handler only once its workers
run, so a torchrun waiting at the rendezvous as PID 1 (a rank whose peer never scheduled, the
Job ended by StartTimeout, a suspend) ignored SIGTERM and its pod stayed Terminating for the
whole `terminationGracePeriodSeconds` (300 s; seen on real nodes). So this process stays PID 1,
exits 143 on SIGTERM while it waits, and afterwards passes SIGTERM and SIGINT on to the command.

Exit codes: the command's own (128 + N when a signal N ended it); 1 when the name did not resolve
in time (the message names the host and says what to check), 2 on a usage error, 143 on SIGTERM
while waiting. Imports no torch.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

EXIT_NOT_RESOLVED = 1
EXIT_USAGE = 2
REASON_RENDEZVOUS_TIMEOUT = "RendezvousNotResolved"
LOG_EVERY_S = 30.0


def resolves(host: str) -> bool:
    try:
        return bool(socket.getaddrinfo(host, None))
    except (socket.gaierror, UnicodeError):
        return False


def wait_for_name(host: str, timeout_s: float, interval_s: float = 1.0, *,
                  resolve: Callable[[str], bool] = resolves, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] | None = None) -> bool:
    """True once `host` resolves; False after `timeout_s`. Polls every `interval_s`."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    start = clock()
    next_log = start
    while True:
        if resolve(host):
            return True
        now = clock()
        if now - start >= timeout_s:
            return False
        if now >= next_log:
            log(f"refinery-train launch: waiting for {host} (rank 0's pod) to resolve, {now - start:.0f}s of {timeout_s:.0f}s")
            next_log = now + LOG_EVERY_S
        sleep(min(interval_s, max(0.0, timeout_s - (now - start))))


def not_resolved_message(host: str, timeout_s: float) -> str:
    service = host.split(".", 1)[-1]  # `<job>-0.<service>`; the Service is named as its Job
    return (f"{host} did not resolve within {timeout_s:g}s: pod 0 of this multi-node stage is not running or not "
            f"published. Check that pod 0 was scheduled (kubectl get pods -l batch.kubernetes.io/job-name={service}), "
            f"that the headless Service {service!r} exists, and the cluster DNS.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refinery-train launch", description="Wait for rank 0's DNS name, then exec COMMAND.")
    parser.add_argument("--wait-for", required=True, metavar="HOST", help="name that must resolve first (pod 0 of the Job)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait at most (default: 600)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two lookups (default: 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to exec")
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):  # PID 1 ignores signals it has no handler for
        signal.signal(signum, exit_on_signal)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.print_usage(sys.stderr)
        print("refinery-train launch: no command after --", file=sys.stderr)
        return EXIT_USAGE
    if not wait_for_name(args.wait_for, args.timeout, args.interval):
        message = not_resolved_message(args.wait_for, args.timeout)
        print(f"refinery-train launch: {message}", file=sys.stderr)
        from .cli import write_termination_message

        write_termination_message(json.dumps({"phase": "Failed", "reason": REASON_RENDEZVOUS_TIMEOUT, "message": message}))
        return EXIT_NOT_RESOLVED
    sys.stdout.flush()
    sys.stderr.flush()
    return run_forwarding_signals(command)


def exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def run_forwarding_signals(command: list[str]) -> int:
    """Run `command`, passing SIGTERM and SIGINT on to it; its exit code (128 + N if signal N ended it)."""
    child = subprocess.Popen(command)  # noqa: S603 - the operator's own torchrun command line

    def forward(signum, _frame) -> None:
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
