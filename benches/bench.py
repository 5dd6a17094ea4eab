"""`make bench`: blipserve against the best Python can do, on the base-size random model.

    python benches/bench.py [--model models/base-random] [--bf16-model models/base-random-bf16]
                            [--int8-model models/base-random-int8] ...

1. transformers `generate` with a frame's questions batched, answers cut at 2 new tokens (what
   blip-vqa-base needs for "yes" + [SEP]; a random-weight model would otherwise run all 19),
   served by benches/reference_server.py under `blipserve loadtest`.
2. blipserve's algorithm written in eager PyTorch (vision once, questions batched, one decoder
   step), float32, bfloat16 and int8 (torch's dynamic quantisation of the same linear layers),
   served the same way: the strongest fair Python baseline at each precision.
3. `blipserve serve` on the same weights, with its defaults, under the same load; its resident
   memory against the traced parts' bytes; and once ready with 1 and with 2 replicas, what an
   extra CPU replica costs; and once ready on the tiny export of each precision (a few MB of
   weights), what the process costs before any weights.
4. `blipserve throughput`: the same frames in-process, no HTTP, in batches the size of the
   server's mean batch, to show what the server layer costs. 3 and 4 run in rounds (six by
   default): each round a load test of each precision's server, started once, and right before
   or after it (in turn, so that a drift of the machine's speed between the two cancels out) an
   in-process round of that precision, from a `blipserve throughput --repeat-on-stdin` started
   once (after its first load test, which gives the batch size); each figure is the median of
   its rounds, and the ratios (served over in-process, one precision over another) are taken
   round by round (a shared machine's speed drifts over minutes).
3 and 4 again on the bfloat16 and int8 exports of the same weights, when they exist.

The same frames (synthetic 1920x1080 JPEGs, written here) and the same three questions go to
every server at the same concurrency. Prints frames/s, p50, p99 and resident memory of each, the
ratios, and whether the targets hold (blipserve serve >= 3x row 1; the server >= 0.95x
in-process at every precision; the fastest reduced precision in-process >= 1.6x float32
in-process and >= 2x eager PyTorch float32); exits 1 when one does not. Other processes competing for the CPU skew every figure:
each phase reports how much of the machine they took.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

QUESTIONS = ["is the dog barking?", "is the dog chewing the furniture?", "is the pet on the sofa?"]
SPEED_UP_TARGET = 3.0
SERVER_SHARE_TARGET = 0.95
REDUCED_OVER_FP32_TARGET = 1.6
REDUCED_OVER_EAGER_TARGET = 2.0
# One float32 replica's resident memory against its weights' bytes, and what an extra CPU replica
# may add (a share of the weights).
RSS_OVER_WEIGHTS_TARGET = 1.3
EXTRA_REPLICA_TARGET = 0.15
# blipserve's precisions, the flag naming each export and the eager baseline's --dtype.
PRECISIONS = [("fp32", "model", "float32"), ("bf16", "bf16_model", "bfloat16"), ("int8", "int8_model", "int8")]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_frames(folder: Path, count: int) -> list[Path]:
    """Camera-like 1080p frames: a room, a sofa and a dog that moves from frame to frame."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        w, h = 1920, 1080
        img = Image.new("RGB", (w, h), (196 - 9 * i, 186, 170 + 5 * i))
        d = ImageDraw.Draw(img)
        d.rectangle([0, int(h * 0.62), w, h], fill=(120, 92, 64))
        d.rectangle([120, 450, 930, 780], fill=(70, 90, 140))
        x, y = 1000 + 150 * i, 620 - 40 * i
        d.ellipse([x, y, x + 420, y + 270], fill=(150, 110, 60))
        d.ellipse([x + 330, y - 90, x + 525, y + 75], fill=(140, 100, 55))
        d.rectangle([1650, 120, 1860, 450], fill=(235, 240, 250))
        path = folder / f"frame-{i}.jpg"
        img.filter(ImageFilter.GaussianBlur(1.2)).save(path, quality=90)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CpuShare:
    """How much of the machine's CPU time, over a phase, went to processes other than ours."""

    def __init__(self):
        self.busy0 = self.machine_busy()

    @staticmethod
    def machine_busy() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def others(self, ours_s: float, elapsed_s: float) -> float:
        busy = self.machine_busy() - self.busy0
        return max(0.0, busy - ours_s) / (elapsed_s * (os.cpu_count() or 1))


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    r = os.times()
    return r.children_user + r.children_system


class Server:
    def __init__(self, name: str, command: list[str], port: int, ready_path: str, log_path: Path):
        self.name, self.port = name, port
        self.log_path = log_path
        log(f"{name}: {' '.join(command)}")
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen(command, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with {self.proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"{name} was not ready within 600 s; see {log_path}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.read().decode()

    def cpu_s(self) -> float:
        return process_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            wait_or_kill(self.proc, 30)
        self.log_file.close()


def wait_or_kill(proc: subprocess.Popen, timeout_s: float) -> None:
    """Waits for a process asked to end, killing it after `timeout_s`."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class InProcess:
    """`blipserve throughput --repeat-on-stdin`: one replica in-process, its model loaded once,
    measuring a round each time it is asked."""

    def __init__(self, name: str, command: list[str], log_path: Path):
        self.name, self.log_path = name, log_path
        log(f"{name}: {' '.join(command)} --repeat-on-stdin")
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen([*command, "--repeat-on-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log_file, text=True)
        self.read()  # the line it writes once loaded

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} exited with {self.proc.wait()}; see {self.log_path}")
        return json.loads(line)

    def round(self, out: Path) -> dict:
        """A round's report (also written to `out`), with the share of the CPU others took."""
        share, cpu0, t0 = CpuShare(), process_cpu_s(self.proc.pid), time.time()
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        report = self.read()
        report["others_cpu_share"] = share.others(process_cpu_s(self.proc.pid) - cpu0, time.time() - t0)
        out.write_text(json.dumps(report, indent=2))
        return report

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the end of its input ends it
            wait_or_kill(self.proc, 60)
        self.log_file.close()


def run(command: list[str], out: Path) -> dict:
    log(" ".join(command))
    with open(out.with_suffix(".log"), "w") as f:
        subprocess.run(command, check=True, stdout=f, stderr=subprocess.STDOUT)
    return json.loads(out.read_text())


def load_test(args, server: Server, frames: list[Path], requests: int, out: Path, query: str = "") -> dict:
    """Warm the server up with one request per client, then measure `requests` requests."""
    command = [args.blipserve, "loadtest", "--url", server.url + "/v1/detect" + query,
               "--concurrency", str(args.concurrency), "--duration-s", str(args.max_phase_s), "--timeout-s", "600"]
    for f in frames:
        command += ["--image", str(f)]
    for q in QUESTIONS:
        command += ["--question", q]
    warmup = out.with_name(out.stem + "-warmup.json")
    run(command + ["--requests", str(args.concurrency), "--json", str(warmup)], warmup)
    batches_before = batch_frames(server)
    share = CpuShare()
    server_cpu, client_cpu = server.cpu_s(), children_cpu_s()
    started = time.time()
    report = run(command + ["--requests", str(requests), "--json", str(out)], out)
    elapsed = time.time() - started
    ours = server.cpu_s() - server_cpu + children_cpu_s() - client_cpu
    report["others_cpu_share"] = share.others(ours, elapsed)
    if batches_before is not None:
        frames_done, batches = (after - before for after, before in zip(batch_frames(server), batches_before))
        report["mean_batch_frames"] = frames_done / max(1, batches)
    if report["ok"] != report["requests"]:
        raise SystemExit(f"{server.name}: {report['requests'] - report['ok']} requests failed: {report['errors']}")
    return report


def batch_frames(server: Server) -> tuple[float, float] | None:
    """Frames and batches the server has answered so far (blipserve's /metrics), or None."""
    try:
        metrics = server.get("/metrics")
    except OSError:
        return None
    values = dict(re.findall(r"^blipserve_batch_frames_(sum|count) (\S+)$", metrics, re.M))
    return (float(values["sum"]), float(values["count"])) if len(values) == 2 else None


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def weights_mb(model: Path) -> float:
    """The traced parts' bytes (their weights, at the precision they were exported in)."""
    return sum(p.stat().st_size for p in model.glob("*.pt")) / 2**20


def reference_rows(args, repo: Path, frames: list[Path], precisions: list[str]) -> list[tuple[str, dict]]:
    """transformers' `generate` (batched, 2 tokens) and blipserve's algorithm in eager PyTorch at
    each precision blipserve is measured in: each a reference server under the same load test."""
    rows = []
    for precision, _, dtype in PRECISIONS:
        if precision not in precisions:
            continue
        phases = [(f"eager PyTorch, same algorithm, {precision}", "?eager=1")]
        if precision == "fp32":
            phases.insert(0, ("transformers generate, batched, 2 tokens", "?max_new_tokens=2&batch=1"))
        port = free_port()
        command = [args.python, str(repo / "benches/reference_server.py"), "--model", args.model, "--port", str(port),
                   "--dtype", dtype]
        server = Server(f"reference-{dtype}", command, port, "/health", args.out / f"reference-{dtype}.log")
        try:
            for name, query in phases:
                slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                report = load_test(args, server, frames, args.reference_requests, args.out / f"{slug}.json", query)
                report["rss_mb"] = rss_mb(server.proc.pid)
                rows.append((name, report))
        finally:
            server.stop()
    return rows


def blipserve_rounds(args, models: dict[str, str], frames: list[Path]) -> list[tuple[str, dict]]:
    """`blipserve serve` of every precision, started once, and `blipserve throughput`, the same
    frames in-process in batches of the server's mean batch with one replica's threads, also
    started once: `--rounds` rounds, each of them a load test of `--requests` frames on each
    server in turn and, right before or after it (in turn), `--in-process-frames` frames
    in-process. A shared machine's speed drifts over minutes, so each figure is the median of its
    rounds and each ratio (served over in-process, one precision over another) is taken round by
    round."""
    servers: dict[str, Server] = {}
    runners: dict[str, InProcess] = {}
    setup: dict[str, dict] = {}
    served: dict[str, list[dict]] = {precision: [] for precision in models}
    inproc: dict[str, list[dict]] = {precision: [] for precision in models}

    def serve_round(precision: str, n: int) -> None:
        report = load_test(args, servers[precision], frames, args.requests, args.out / f"blipserve-{precision}-{n}.json")
        report["rss_mb"] = rss_mb(servers[precision].proc.pid)
        served[precision].append(report)
        setup[precision].setdefault("batch", max(1, round(report.get("mean_batch_frames", 1))))

    def in_process_round(precision: str, n: int) -> None:
        if precision not in runners:
            s = setup[precision]
            command = [args.blipserve, "throughput", "--model", models[precision], "--frames",
                       str(args.in_process_frames), "--batch-frames", str(s["batch"]),
                       "--threads", str(s["info"]["threads_per_replica"])]
            for frame in frames:
                command += ["--image", str(frame)]
            for q in QUESTIONS:
                command += ["--question", q]
            runners[precision] = InProcess(f"in-process-{precision}", command, args.out / f"in-process-{precision}.log")
        inproc[precision].append(runners[precision].round(args.out / f"in-process-{precision}-{n}.json"))

    try:
        for precision, model in models.items():
            # blipserve's defaults; only the request deadline is raised, so that a machine slowed
            # down by something else shows in the figures rather than as 504s.
            command = [args.blipserve, "serve", "--model", model, "--port", str(port := free_port()),
                       "--request-timeout-ms", "120000", *args.serve_arg]
            server = servers[precision] = Server(f"blipserve-{precision}", command, port, "/ready",
                                                 args.out / f"blipserve-{precision}.log")
            time.sleep(1)
            setup[precision] = {"ready_rss_mb": rss_mb(server.proc.pid), "weights_mb": weights_mb(Path(model)),
                                "info": json.loads(server.get("/v1/info"))}
        for n in range(args.rounds):
            for precision in models:
                # Served first in even rounds (the first gives the in-process batch size), second in odd ones.
                order = (serve_round, in_process_round) if n % 2 == 0 else (in_process_round, serve_round)
                for measure in order:
                    measure(precision, n)
    finally:
        for process in [*runners.values(), *servers.values()]:
            process.stop()

    rows = []
    for precision, reports in served.items():
        s, info = setup[precision], setup[precision]["info"]
        batches = [r["mean_batch_frames"] for r in reports if "mean_batch_frames" in r]
        row = median_row(reports)
        row.update({
            "ok": sum(r["ok"] for r in reports),
            # The rounds' median p50 and their highest p99.
            "latency_ms": {"p50": statistics.median(r["latency_ms"]["p50"] for r in reports),
                           "p99": max(r["latency_ms"]["p99"] for r in reports)},
            "ready_rss_mb": s["ready_rss_mb"],
            # The highest of the rounds, each taken as its load test ends.
            "rss_mb": max(r["rss_mb"] for r in reports),
            "weights_mb": s["weights_mb"],
            "share_of_in_process": statistics.median(
                a["throughput_per_s"] / b["throughput_per_s"] for a, b in zip(reports, inproc[precision])),
            "setup": (f"--model {models[precision]}: {info['replicas']} replica x {info['threads_per_replica']} threads, "
                      f"max batch {info['batching']['max_batch_frames']} frames (mean batch "
                      f"{statistics.mean(batches) if batches else float('nan'):.2f}); in-process: --batch-frames "
                      f"{s['batch']} --threads {info['threads_per_replica']}"),
        })
        rows.append((f"blipserve serve, {precision}", row))
    rows += [(f"blipserve in-process, {precision}", median_row(reports)) for precision, reports in inproc.items()]
    return rows


def median_row(reports: list[dict]) -> dict:
    return {
        "frames": sum(r["frames"] for r in reports if "frames" in r),
        "throughput_per_s": statistics.median(r["throughput_per_s"] for r in reports),
        "others_cpu_share": max(r["others_cpu_share"] for r in reports),
        "rounds": [round(r["throughput_per_s"], 3) for r in reports],
        "reports": reports,
    }


def ready_rss(args, name: str, model: str, *flags: str) -> float:
    """Resident memory of `blipserve serve` on `model` once ready (a second after /ready)."""
    command = [args.blipserve, "serve", "--model", model, "--port", str(port := free_port()), *flags]
    server = Server(name, command, port, "/ready", args.out / f"{name}.log")
    try:
        time.sleep(1)
        return rss_mb(server.proc.pid)
    finally:
        server.stop()


def replica_memory(args, model: str) -> dict[int, float]:
    """Resident memory once ready with 1 and with 2 replicas (one thread each): what an extra CPU
    replica costs."""
    return {n: ready_rss(args, f"blipserve-{n}-replicas", model, "--replicas", str(n), "--threads", "1")
            for n in (1, 2)}


def runtime_memory(args, precisions: list[str]) -> dict[str, dict]:
    """Resident memory once ready of the tiny export at each precision (a few MB of weights):
    what the process costs before any weights, the floor under every ratio of resident memory
    to weights."""
    runtime = {}
    for precision in precisions:
        model = args.tiny_model + ("" if precision == "fp32" else f"-{precision}")
        if not Path(model).joinpath("manifest.json").is_file():
            log(f"no {model}: the {precision} runtime is not measured (make {model}/manifest.json)")
            continue
        runtime[precision] = {"rss_mb": ready_rss(args, f"blipserve-tiny-{precision}", model, *args.serve_arg),
                              "weights_mb": weights_mb(Path(model))}
    return runtime


def main(argv=None) -> int:
    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(repo / "models/base-random"))
    p.add_argument("--bf16-model", default=str(repo / "models/base-random-bf16"),
                   help="the same weights exported in bfloat16 (skipped when absent)")
    p.add_argument("--int8-model", default=str(repo / "models/base-random-int8"),
                   help="the same weights exported with int8 linear layers (skipped when absent)")
    p.add_argument("--tiny-model", default=str(repo / "models/tiny"),
                   help="the tiny export, whose process measures the runtime's own memory (its -bf16 and "
                        "-int8 siblings for those precisions)")
    p.add_argument("--blipserve", default=str(repo / "target/release/blipserve"))
    p.add_argument("--python", default=sys.executable, help="Python of the pinned environment")
    p.add_argument("--out", type=Path, default=repo / "target/bench", help="frames, reports and logs")
    p.add_argument("--concurrency", type=int, default=2, help="clients of each load test")
    p.add_argument("--reference-requests", type=int, default=8, help="frames measured on each Python baseline")
    p.add_argument("--requests", type=int, default=8, help="frames of each round's load test on each blipserve server")
    p.add_argument("--in-process-frames", type=int, default=8, help="frames of each round's in-process run")
    p.add_argument("--rounds", type=int, default=6,
                   help="rounds of every precision, each served and in-process (in turn, one first then the other)")
    p.add_argument("--max-phase-s", type=float, default=180, help="longest a load test may run")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `blipserve serve` flag (repeatable)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log(f"{os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    frames = write_frames(args.out / "frames", 4)

    models = {}
    for precision, flag, _ in PRECISIONS:
        model = getattr(args, flag)
        if Path(model).joinpath("manifest.json").is_file():
            models[precision] = model
        elif precision == "fp32":
            raise SystemExit(f"no {model}: make {model}/manifest.json")
        else:
            log(f"no {model}: the {precision} rows are skipped (make {model}/manifest.json)")
    rows = reference_rows(args, repo, frames, list(models))
    rows += blipserve_rounds(args, models, frames)
    replicas = replica_memory(args, args.model)
    runtime = runtime_memory(args, list(models))
    r = dict(rows)
    fps = {name: report["throughput_per_s"] for name, report in rows}

    print()
    print(f"make bench: {Path(args.model).name}, {os.cpu_count()} cores, {len(frames)} different 1920x1080 JPEG "
          f"frames x {len(QUESTIONS)} yes/no questions, {args.concurrency} concurrent clients (blipserve loadtest, "
          f"closed loop) on every server")
    print(f"  Python baselines: benches/reference_server.py, transformers {ref_versions(args.python)}, torch threads "
          f"= cores, one request at a time: generate with the frame's questions batched, cut at 2 new tokens "
          f"(blip-vqa-base's yes/no answer: 'yes' + [SEP]); and blipserve's algorithm in eager PyTorch (vision once, "
          f"questions batched, one decoder step)")
    for precision in models:
        print(f"  blipserve {precision}: {r[f'blipserve serve, {precision}']['setup']}")
    print()
    print(f"| {'':42} | {'frames':>6} | {'frames/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'RSS MB':>7} | "
          f"{'weights MB':>10} | {'CPU taken by others':>19} |")
    print(f"| {'-' * 42} | {'-' * 5}: | {'-' * 7}: | {'-' * 6}: | {'-' * 6}: | {'-' * 6}: | {'-' * 9}: | {'-' * 18}: |")
    for name, report in rows:
        n = report.get("ok", report.get("frames"))
        lat = report.get("latency_ms")
        p50, p99 = (f"{lat['p50']:.0f}", f"{lat['p99']:.0f}") if lat else ("-", "-")
        rss = f"{report['rss_mb']:.0f}" if "rss_mb" in report else "-"
        weights = f"{report['weights_mb']:.0f}" if "weights_mb" in report else "-"
        print(f"| {name:42} | {n:>6} | {report['throughput_per_s']:>8.3f} | {p50:>7} | {p99:>7} | {rss:>7} | "
              f"{weights:>10} | {report['others_cpu_share']:>19.0%} |")
    for kind in ("serve", "in-process"):
        rounds = "; ".join(f"{p} {r[f'blipserve {kind}, {p}']['rounds']}" for p in models)
        print(f"{kind} frames/s per round: {rounds}")
    print()
    inproc = fps["blipserve in-process, fp32"]
    eager = fps["eager PyTorch, same algorithm, fp32"]
    checks = []

    def ratio(label: str, value: float, note: str, target: float | None = None, at_most: float | None = None) -> None:
        verdict = ""
        if target is not None:
            checks.append(value >= target)
            verdict = f" (target >= {target}: {'met' if value >= target else 'MISSED'})"
        if at_most is not None:
            checks.append(value <= at_most)
            verdict = f" (target <= {at_most}: {'met' if value <= at_most else 'MISSED'})"
        print(f"{label + ':':<54}{value:6.2f}x {note}{verdict}")

    ratio("blipserve serve / transformers generate (2 tokens)",
          fps["blipserve serve, fp32"] / fps["transformers generate, batched, 2 tokens"], "frames/s, fp32",
          SPEED_UP_TARGET)
    ratio("blipserve in-process / eager PyTorch, same algorithm", inproc / eager, "frames/s (fp32 both)")
    for precision in models:
        ratio(f"blipserve serve / in-process, {precision}", r[f"blipserve serve, {precision}"]["share_of_in_process"],
              "frames/s (median of per-round ratios)", SERVER_SHARE_TARGET)
    for precision in models:
        served = r[f"blipserve serve, {precision}"]
        target = RSS_OVER_WEIGHTS_TARGET if precision == "fp32" else None
        ratio(f"blipserve serve RSS when ready / weights, {precision}", served["ready_rss_mb"] / served["weights_mb"],
              f"({served['ready_rss_mb']:.0f} MB / {served['weights_mb']:.0f} MB)", at_most=target)
        ratio(f"blipserve serve RSS / weights, {precision}", served["rss_mb"] / served["weights_mb"],
              f"({served['rss_mb']:.0f} MB / {served['weights_mb']:.0f} MB, just after the load test)", at_most=target)
    for precision, tiny in runtime.items():
        served, own = r[f"blipserve serve, {precision}"], tiny["rss_mb"] - tiny["weights_mb"]
        print(f"{'blipserve serve RSS when ready, tiny ' + precision + ':':<54}{tiny['rss_mb']:.0f} MB with "
              f"{tiny['weights_mb']:.0f} MB of weights: {own:.0f} MB of runtime")
        for when, rss in (("when ready", served["ready_rss_mb"]), ("just after the load test", served["rss_mb"])):
            ratio(f"blipserve serve (RSS - runtime) / weights, {precision}", (rss - own) / served["weights_mb"],
                  f"(({rss:.0f} - {own:.0f}) MB / {served['weights_mb']:.0f} MB, {when})")
    extra, weights = replicas[2] - replicas[1], r["blipserve serve, fp32"]["weights_mb"]
    print(f"{'blipserve serve RSS when ready, 1 / 2 replicas:':<54}{replicas[1]:.0f} / {replicas[2]:.0f} MB: an extra "
          f"CPU replica adds {extra:.0f} MB, {extra / weights:.1%} of the weights (fp32; one shared copy)"
          f" (target <= {EXTRA_REPLICA_TARGET:.0%}: {'met' if extra / weights <= EXTRA_REPLICA_TARGET else 'MISSED'})")
    checks.append(extra / weights <= EXTRA_REPLICA_TARGET)

    def paired(kind: str, precision: str) -> float:
        """Median over rounds of precision's frames/s over fp32's in the same round (kind: serve
        or in-process)."""
        mine, fp32 = (r[f"blipserve {kind}, {p}"]["reports"] for p in (precision, "fp32"))
        return statistics.median(a["throughput_per_s"] / b["throughput_per_s"] for a, b in zip(mine, fp32))

    reduced = [p for p in models if p != "fp32"]
    for precision in reduced:
        mine = fps[f"blipserve in-process, {precision}"]
        ratio(f"blipserve {precision} / fp32, in-process", paired("in-process", precision), "frames/s (median of per-round ratios)")
        ratio(f"blipserve {precision} / fp32, serve", paired("serve", precision), "frames/s (median of per-round ratios)")
        ratio(f"blipserve {precision} in-process / eager PyTorch fp32", mine / eager, "frames/s")
        ratio(f"blipserve {precision} in-process / eager PyTorch {precision}",
              mine / fps[f"eager PyTorch, same algorithm, {precision}"], "frames/s (the same precision both)")
        ratio(f"eager PyTorch {precision} / fp32", fps[f"eager PyTorch, same algorithm, {precision}"] / eager,
              "frames/s (what this CPU gives plain PyTorch in that precision)")
    if reduced:
        best = max(reduced, key=lambda p: fps[f"blipserve in-process, {p}"])
        mine = fps[f"blipserve in-process, {best}"]
        print(f"fastest reduced precision here: {best}")
        ratio(f"blipserve {best} / fp32, in-process", paired("in-process", best), "frames/s (median of per-round ratios)",
              REDUCED_OVER_FP32_TARGET)
        ratio(f"blipserve {best} in-process / eager PyTorch fp32", mine / eager, "frames/s", REDUCED_OVER_EAGER_TARGET)
    worst = max(report["others_cpu_share"] for _, report in rows)
    if worst > 0.05:
        print(f"warning: other processes took up to {worst:.0%} of the CPU during a measurement: the figures are skewed")
    print(f"make bench took {time.time() - started:.0f} s; reports and logs in {args.out}")
    return 0 if all(checks) else 1


def ref_versions(python: str) -> str:
    out = subprocess.run([python, "-c", "import torch, transformers; print(transformers.__version__, torch.__version__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    return f"{out[0]}, torch {out[1]}"


if __name__ == "__main__":
    sys.exit(main())
