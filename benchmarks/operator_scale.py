"""Operator memory and full-resync time with 1,000 pipelines.

    python benchmarks/operator_scale.py                  # 1,000 pipelines, emulator and real API server
    python benchmarks/operator_scale.py --pipelines 200 --api real

What runs: kmock 0.8's Kubernetes emulator on loopback in this process — `IndexedEmulator`
(tests/operator/harness.py: kmock plus server-side label selectors, indexed look-ups and routing
that does not walk the request history, as a real API server has) — and the real operator in a
separate process (`python -m tests.operator.harness operator KUBECONFIG`), so its RSS is its own.
No stage runs: Jobs stay as created (no kubelet), which is what a resync sees of a busy cluster.

Measured:
- cold resync: operator start -> every pipeline reconciled (its first Job — the initializer
  that checks its inputs — created and its status written: each of the N pipelines needs its
  ServiceAccount, Role, RoleBinding, progress ConfigMaps, the initializer's ConfigMap and Job
  and a status patch);
- warm resync: the operator restarted over the same N pipelines -> every pipeline reconciled
  again (observed on the new process's /metrics: `refinery_pipelines` counts a pipeline once a
  reconcile of it has finished; scraped every second, so the figure is good to ~1 s);
- operator RSS after each resync, and its peak (VmHWM).
Targets (issue 3): RSS <= 300 MB, resync <= 60 s. The last stdout line is one JSON object.

`--api real` (benchmarks/real_api.py): the same on a real kube-apiserver, etcd and
kube-controller-manager (`../shared/k8s/control-plane`), the operator as `refinery operator
--namespace`. The job controller creates each Job's pod (no node: they stay Pending), as on a
cluster whose nodes are busy. Cold resync is read from the API (every pipeline's status showing
its `InputsChecked` condition, and its initializer Job), warm from the operator's /metrics as above; the operator's CPU seconds in each
resync and the status patches it had to pass again after a 409 (`refinery_status_conflicts_total`)
are reported beside them, and so is the control plane's own cost: kube-apiserver, etcd and kube-controller-manager RSS at the end and CPU seconds during the run.
`--api emulator real` (the default) runs both, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.operator_latency import manifest  # noqa: E402
from refinery.core.sources import INPUTS_CHECKED, initializer_job_name  # noqa: E402
from tests.operator.harness import (  # noqa: E402
    NAMESPACE, IndexedEmulator, operator_in_process, serve_emulator, server_url, stored, with_server_fields,
    write_kubeconfig,
)

PIPELINES = "refinery.dev/v1alpha1/trainingpipelines"


def inputs_check_recorded(pipeline: dict | None) -> bool:
    """The operator reconciled it: its status says the initializer is checking its inputs."""
    conditions = ((pipeline or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == INPUTS_CHECKED for c in conditions)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def until(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def pipelines_reconciled(session: aiohttp.ClientSession, metrics_url: str) -> int:
    """Pipelines the operator process has reconciled since it started, from its own /metrics."""
    try:
        async with session.get(metrics_url) as r:
            text = await r.text()
    except aiohttp.ClientError:  # not serving yet
        return 0
    wanted = "\n".join(line for line in text.splitlines() if line.startswith("refinery_pipelines{"))
    return int(sum(sample.value for family in text_string_to_metric_families(wanted) for sample in family.samples))


async def scraped(session: aiohttp.ClientSession, metrics_url: str, name: str) -> float:
    """One unlabelled sample of the operator's /metrics (0 when absent or not served)."""
    try:
        async with session.get(metrics_url) as r:
            text = await r.text()
    except aiohttp.ClientError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    return 0.0


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def until_async(predicate, timeout: float, what: str, every: float = 1.0) -> float:
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        await asyncio.sleep(every)
    return time.monotonic() - started


async def run(pipelines: int, workdir: Path, timeout: float) -> dict:
    port = free_port()
    os.environ["REFINERY_METRICS_PORT"] = str(port)  # the operator processes serve /metrics there
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    async with serve_emulator(IndexedEmulator) as emulator, aiohttp.ClientSession() as session:
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", server_url(emulator))
        url = f"{server_url(emulator)}/apis/refinery.dev/v1alpha1/namespaces/{NAMESPACE}/trainingpipelines"
        for i in range(pipelines):
            async with session.post(url, json=with_server_fields(manifest(f"scale-{i:04d}", 30))) as r:
                r.raise_for_status()
        names = [f"scale-{i:04d}" for i in range(pipelines)]

        def all_started() -> bool:
            return all(inputs_check_recorded(stored(emulator, PIPELINES, n))
                       and stored(emulator, "batch/v1/jobs", initializer_job_name(n, 1)) is not None for n in names)

        log = workdir / "operator.log"
        started = time.monotonic()
        async with operator_in_process(kubeconfig, log) as operator:
            cold = await until(all_started, timeout, "cold resync")
            await asyncio.sleep(2)
            cold_rss = psutil.Process(operator.pid).memory_info().rss / 2**20
            cold_peak = peak_rss_mb(operator.pid)
        async with operator_in_process(kubeconfig, log) as operator:
            async def all_reconciled() -> bool:
                return await pipelines_reconciled(session, metrics_url) == pipelines
            warm = await until_async(all_reconciled, timeout, "warm resync")
            await asyncio.sleep(2)
            warm_rss = psutil.Process(operator.pid).memory_info().rss / 2**20
            warm_peak = peak_rss_mb(operator.pid)
        jobs = sum(1 for n in names if stored(emulator, "batch/v1/jobs", initializer_job_name(n, 1)) is not None)
    return {
        "pipelines": pipelines, "jobs": jobs, "totalS": round(time.monotonic() - started, 1),
        "coldResyncS": round(cold, 1), "warmResyncS": round(warm, 1),
        "rssMB": round(max(cold_rss, warm_rss), 1), "coldRssMB": round(cold_rss, 1), "warmRssMB": round(warm_rss, 1),
        "peakRssMB": round(max(cold_peak, warm_peak), 1),
    }


async def run_real(pipelines: int, workdir: Path, timeout: float) -> dict:
    from benchmarks import real_api

    namespace, port = "bench", free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    async with real_api.control_plane(workdir / "real") as plane, real_api.RealAPI(plane.kubeconfig, workdir) as api, \
            aiohttp.ClientSession() as session:
        await real_api.create_namespace(api, namespace)
        base = f"/apis/refinery.dev/v1alpha1/namespaces/{namespace}/trainingpipelines"
        before = real_api.usage(plane)
        for first in range(0, pipelines, 20):
            bodies = [manifest(f"scale-{i:04d}", 30) for i in range(first, min(pipelines, first + 20))]
            for body in bodies:
                body["metadata"]["namespace"] = namespace
            await asyncio.gather(*(api.call("POST", base, body) for body in bodies))

        async def all_started() -> bool:
            listed = await api.call("GET", base)
            running = sum(1 for p in listed.get("items") or [] if inputs_check_recorded(p))
            jobs = await api.call("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs",
                                  params={"labelSelector": "app.kubernetes.io/component=stage"})
            return running == pipelines and len(jobs.get("items") or []) == pipelines

        log = workdir / "operator-real.log"
        started = time.monotonic()
        async with real_api.operator_process(plane.kubeconfig, namespace, log, port) as operator:
            cold = await until_async(all_started, timeout, "cold resync")
            cold_cpu = cpu_seconds(operator.pid)
            await asyncio.sleep(2)
            cold_rss, cold_peak = psutil.Process(operator.pid).memory_info().rss / 2**20, peak_rss_mb(operator.pid)
            conflicts = await scraped(session, metrics_url, "refinery_status_conflicts_total")
        after_cold = real_api.usage(plane)
        async with real_api.operator_process(plane.kubeconfig, namespace, log, port) as operator:
            async def all_reconciled() -> bool:
                return await pipelines_reconciled(session, metrics_url) == pipelines
            warm = await until_async(all_reconciled, timeout, "warm resync")
            warm_cpu = cpu_seconds(operator.pid)
            await asyncio.sleep(2)
            warm_rss, warm_peak = psutil.Process(operator.pid).memory_info().rss / 2**20, peak_rss_mb(operator.pid)
        after = real_api.usage(plane)
        jobs = len((await api.call("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")).get("items") or [])
    return {
        "pipelines": pipelines, "api": "real", "jobs": jobs, "totalS": round(time.monotonic() - started, 1),
        "coldResyncS": round(cold, 1), "warmResyncS": round(warm, 1),
        "rssMB": round(max(cold_rss, warm_rss), 1), "coldRssMB": round(cold_rss, 1), "warmRssMB": round(warm_rss, 1),
        "peakRssMB": round(max(cold_peak, warm_peak), 1),
        "operatorCpuS": {"coldResync": round(cold_cpu, 1), "warmResync": round(warm_cpu, 1)},
        "statusConflictsCold": int(conflicts),
        "apiServerRssMB": after["kube-apiserverRssMB"], "etcdRssMB": after["etcdRssMB"],
        "controllerManagerRssMB": after["kube-controller-managerRssMB"],
        "apiServerCpuS": {"create": round(after_cold["kube-apiserverCpuS"] - before["kube-apiserverCpuS"], 1),
                          "warmResync": round(after["kube-apiserverCpuS"] - after_cold["kube-apiserverCpuS"], 1)},
        "etcdCpuS": round(after["etcdCpuS"] - before["etcdCpuS"], 1),
        "controllerManagerCpuS": round(after["kube-controller-managerCpuS"] - before["kube-controller-managerCpuS"], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=200.0, help="give up a resync after this many seconds")
    parser.add_argument("--api", nargs="+", choices=("emulator", "real"), default=["emulator", "real"],
                        help="which API server(s): kmock's emulator and/or a real kube-apiserver (default: both)")
    args = parser.parse_args()
    apis, results = list(args.api), []
    if "real" in apis:
        from benchmarks.real_api import unavailable

        why = unavailable()
        if why:
            print(f"--api real skipped: {why}")
            apis.remove("real")
    with tempfile.TemporaryDirectory() as tmp:
        for api in apis:
            if api == "emulator":
                results.append({**asyncio.run(run(args.pipelines, Path(tmp), args.timeout)), "api": "emulator"})
            else:
                results.append(asyncio.run(run_real(args.pipelines, Path(tmp), args.timeout)))
    for r in results:
        report(r)
    print(json.dumps({"benchmark": "operator_scale", "emulator": "kmock 0.8 KubernetesEmulator (+label selectors, "
                      "indexed look-ups, history-free routing) on loopback",
                      "realApi": "kube-apiserver + etcd + kube-controller-manager v1.36.2 on loopback (../shared/k8s/control-plane)",
                      "operator": "separate process", "results": results}, sort_keys=True))
    return 0


def report(r: dict) -> None:
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    where = "kmock 0.8 IndexedEmulator on loopback" if r["api"] == "emulator" else "real kube-apiserver v1.36.2 on loopback"
    print(f"pipelines {r['pipelines']} (Jobs created: {r['jobs']}), API: {where}")
    print(f"  cold resync (operator start -> every pipeline reconciled, objects created): {r['coldResyncS']:7.1f} s"
          f"  target <= 60 s  {ok(r['coldResyncS'] <= 60)}")
    print(f"  warm resync (operator restart -> every pipeline reconciled again):          {r['warmResyncS']:7.1f} s"
          f"  target <= 60 s  {ok(r['warmResyncS'] <= 60)}")
    print(f"  operator RSS after resync: cold {r['coldRssMB']:.0f} MB, warm {r['warmRssMB']:.0f} MB, peak {r['peakRssMB']:.0f} MB"
          f"  target <= 300 MB  {ok(r['peakRssMB'] <= 300)}")
    if r["api"] == "real":
        print(f"  control plane: kube-apiserver RSS {r['apiServerRssMB']:.0f} MB, CPU {r['apiServerCpuS']['create']:.0f} s "
              f"(create + cold resync) + {r['apiServerCpuS']['warmResync']:.0f} s (warm resync); etcd RSS {r['etcdRssMB']:.0f} MB, "
              f"CPU {r['etcdCpuS']:.0f} s; kube-controller-manager RSS {r['controllerManagerRssMB']:.0f} MB, CPU {r['controllerManagerCpuS']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
