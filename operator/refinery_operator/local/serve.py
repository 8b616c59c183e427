"""Local mode's /metrics: the operator's metrics of the pipelines `refinery run` runs, on localhost.

    refinery run examples/tiny-chat.yaml                          # http://127.0.0.1:8000/metrics
    refinery run examples/tiny-chat.yaml --metrics-port 9100
    REFINERY_METRICS_PORT=0 refinery run examples/tiny-chat.yaml  # no metrics

The samples are the operator's (`refinery_operator.metrics`: `refinery_stage_phase`,
`refinery_stage_step`, `refinery_stage_progress_ratio` ...), recorded from the local status after
every change, so a dashboard built for the operator reads a local run unchanged. Their
`namespace` label is always `local`: local mode has no namespace (a pipeline lives in
`<workdir>/<pipeline>` whatever `metadata.namespace` the manifest names), and one fixed value
keeps a dashboard's namespace filter working.

The port: `--metrics-port`, else `$REFINERY_METRICS_PORT`, else 8000 (the operator's, so a
scrape config written for the operator works); `0` turns metrics off. Only 127.0.0.1 is bound:
the endpoint has no authentication. A taken port never fails a run: one warning, and the OS
picks a free port instead, whose URL is printed as usual — so two runs at once, or tests, each
get their own endpoint.

The stage processes serve nothing here (`refinery_trainer.metrics` serves only inside a pod);
the runner keeps `$REFINERY_METRICS_PORT` out of their environment, where it would name this
endpoint's port. This module is handed the registry: `local` may not import the operator's
`metrics` module (a sibling layer), `refinery_operator.cli` joins the two.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, start_http_server

LOCAL_NAMESPACE = "local"  # the `namespace` label of every local pipeline (see above)
DEFAULT_PORT = 8000  # the operator's default (handlers.METRICS_PORT)
HOST = "127.0.0.1"


@dataclass
class MetricsEndpoint:
    url: str
    server: Any  # the WSGI server of prometheus_client.start_http_server

    @property
    def port(self) -> int:
        return self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(registry: CollectorRegistry, port: int | None, stream: TextIO | None = None) -> MetricsEndpoint | None:
    """Serve `registry` on 127.0.0.1:`port` (a free port when that one is taken) and print the URL.
    None when `port` is None (metrics off) or no port at all can be bound."""
    stream = stream or sys.stderr
    if port is None:
        return None
    try:
        server, _ = start_http_server(port, addr=HOST, registry=registry)
    except OSError as taken:
        try:
            server, _ = start_http_server(0, addr=HOST, registry=registry)
        except OSError as exc:
            print(f"warning: metrics are off: cannot serve on {HOST}:{port} ({taken.strerror or taken}) "
                  f"nor on any free port ({exc.strerror or exc})", file=stream)
            return None
        print(f"warning: metrics: port {port} on {HOST} is taken ({taken.strerror or taken}); serving on "
              f"port {server.server_port} instead (--metrics-port chooses one, 0 turns metrics off)", file=stream)
    endpoint = MetricsEndpoint(f"http://{HOST}:{server.server_port}/metrics", server)
    print(f"metrics: {endpoint.url}", file=stream, flush=True)
    return endpoint
