"""`make bench`: blipserve against the best Python can do, on the base-size random model.

    python benches/bench.py [--model models/base-random] [--bf16-model models/base-random-bf16] ...

1. transformers `generate` with a frame's questions batched, answers cut at 2 new tokens (what
   blip-vqa-base needs for "yes" + [SEP]; a random-weight model would otherwise run all 19),
   served by benches/reference_server.py under `blipserve loadtest`.
2. blipserve's algorithm written in eager PyTorch (vision once, questions batched, one decoder
   step), float32 and bfloat16, served the same way: the strongest fair Python baseline.
3. `blipserve serve` on the same weights, with its defaults, under the same load; its resident
   memory against the traced parts' bytes; and once ready with 1 and with 2 replicas, what an
   extra CPU replica costs.
4. `blipserve throughput`: the same frames in-process, no HTTP, in batches the size of the
   server's mean batch, to show what the server layer costs.
3 and 4 again on the bfloat16 export of the same weights, when it exists.

The same frames (synthetic 1920x1080 JPEGs, written here) and the same three questions go to
every server at the same concurrency. Prints frames/s, p50, p99 and resident memory of each, the
ratios, and whether the targets hold (blipserve serve >= 3x row 1; the server >= 0.95x
in-process); exits 1 when one does not. Other processes competing for the CPU skew every figure:
each phase reports how much of the machine they took.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

QUESTIONS = ["is the dog barking?", "is the dog chewing the furniture?", "is the pet on the sofa?"]
SPEED_UP_TARGET = 3.0
SERVER_SHARE_TARGET = 0.95


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
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
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


def reference_rows(args, repo: Path, frames: list[Path]) -> list[tuple[str, dict]]:
    """transformers' `generate` (batched, 2 tokens) and blipserve's algorithm in eager PyTorch,
    float32 and bfloat16: each a reference server under the same load test."""
    rows = []
    for dtype, phases in [
        ("float32", [("transformers generate, batched, 2 tokens", "?max_new_tokens=2&batch=1"),
                     ("eager PyTorch, same algorithm, fp32", "?eager=1")]),
        ("bfloat16", [("eager PyTorch, same algorithm, bf16", "?eager=1")]),
    ]:
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


def blipserve_rows(args, model: str, precision: str, frames: list[Path]) -> list[tuple[str, dict]]:
    """`blipserve serve` under the load test, then `blipserve throughput` in-process in batches
    of the server's mean batch with one replica's threads."""
    # blipserve's defaults; only the request deadline is raised, so that a machine slowed down by
    # something else shows in the figures rather than as 504s.
    command = [args.blipserve, "serve", "--model", model, "--port", str(port := free_port()),
               "--request-timeout-ms", "120000", *args.serve_arg]
    server = Server(f"blipserve-{precision}", command, port, "/ready", args.out / f"blipserve-{precision}.log")
    try:
        served = load_test(args, server, frames, args.requests, args.out / f"blipserve-{precision}.json")
        served["rss_mb"] = rss_mb(server.proc.pid)
        info = json.loads(server.get("/v1/info"))
    finally:
        server.stop()
    served["weights_mb"] = weights_mb(Path(model))
    batch = max(1, round(served["mean_batch_frames"]))
    threads = info["threads_per_replica"]
    out = args.out / f"in-process-{precision}.json"
    command = [args.blipserve, "throughput", "--model", model, "--frames", str(args.requests),
               "--batch-frames", str(batch), "--threads", str(threads), "--json", str(out)]
    for f in frames:
        command += ["--image", str(f)]
    for q in QUESTIONS:
        command += ["--question", q]
    share = CpuShare()
    cpu0, t0 = children_cpu_s(), time.time()
    inproc = run(command, out)
    inproc["others_cpu_share"] = share.others(children_cpu_s() - cpu0, time.time() - t0)
    served["setup"] = (f"{' '.join(command[2:4])}: {info['replicas']} replica x {threads} threads, max batch "
                       f"{info['batching']['max_batch_frames']} frames (mean batch {served['mean_batch_frames']:.2f}); "
                       f"in-process: --batch-frames {batch} --threads {threads}")
    return [(f"blipserve serve, {precision}", served), (f"blipserve in-process, {precision}", inproc)]


def replica_memory(args, model: str) -> dict:
    """Resident memory of `blipserve serve` once ready, with 1 and with 2 replicas (one thread
    each): what an extra CPU replica costs."""
    ready = {}
    for replicas in (1, 2):
        command = [args.blipserve, "serve", "--model", model, "--port", str(port := free_port()),
                   "--replicas", str(replicas), "--threads", "1"]
        server = Server(f"blipserve-{replicas}-replicas", command, port, "/ready",
                        args.out / f"blipserve-{replicas}-replicas.log")
        try:
            time.sleep(1)
            ready[replicas] = rss_mb(server.proc.pid)
        finally:
            server.stop()
    return ready


def main(argv=None) -> int:
    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(repo / "models/base-random"))
    p.add_argument("--bf16-model", default=str(repo / "models/base-random-bf16"),
                   help="the same weights exported in bfloat16 (skipped when absent)")
    p.add_argument("--blipserve", default=str(repo / "target/release/blipserve"))
    p.add_argument("--python", default=sys.executable, help="Python of the pinned environment")
    p.add_argument("--out", type=Path, default=repo / "target/bench", help="frames, reports and logs")
    p.add_argument("--concurrency", type=int, default=2, help="clients of each load test")
    p.add_argument("--reference-requests", type=int, default=8, help="frames measured on each Python baseline")
    p.add_argument("--requests", type=int, default=32, help="frames measured on blipserve and in-process")
    p.add_argument("--max-phase-s", type=float, default=180, help="longest a load test may run")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `blipserve serve` flag (repeatable)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log(f"{os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    frames = write_frames(args.out / "frames", 4)

    rows = reference_rows(args, repo, frames)
    rows += blipserve_rows(args, args.model, "fp32", frames)
    replicas = replica_memory(args, args.model)
    bf16 = Path(args.bf16_model).joinpath("manifest.json").is_file()
    if bf16:
        rows += blipserve_rows(args, args.bf16_model, "bf16", frames)
    else:
        log(f"no {args.bf16_model}: the bf16 rows are skipped (make {args.bf16_model}/manifest.json)")
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
    print(f"  blipserve fp32: {r['blipserve serve, fp32']['setup']}")
    if bf16:
        print(f"  blipserve bf16: {r['blipserve serve, bf16']['setup']}")
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
    print()
    served, inproc = fps["blipserve serve, fp32"], fps["blipserve in-process, fp32"]
    speed_up = served / fps["transformers generate, batched, 2 tokens"]
    over_eager = inproc / fps["eager PyTorch, same algorithm, fp32"]
    server_share = served / inproc
    ok_speed = speed_up >= SPEED_UP_TARGET
    ok_share = server_share >= SERVER_SHARE_TARGET
    print(f"blipserve serve / transformers generate (2 tokens):  {speed_up:5.2f}x frames/s "
          f"(target >= {SPEED_UP_TARGET}x: {'met' if ok_speed else 'MISSED'})")
    print(f"blipserve in-process / eager PyTorch, same algorithm: {over_eager:5.2f}x frames/s (fp32 both)")
    print(f"blipserve serve / in-process:                         {server_share:5.3f} "
          f"(target >= {SERVER_SHARE_TARGET}: {'met' if ok_share else 'MISSED'})")
    print(f"blipserve serve RSS / weights:                        "
          f"{r['blipserve serve, fp32']['rss_mb'] / r['blipserve serve, fp32']['weights_mb']:5.2f} (fp32)")
    extra = replicas[2] - replicas[1]
    print(f"blipserve serve RSS when ready, 1 / 2 replicas:        {replicas[1]:.0f} / {replicas[2]:.0f} MB: "
          f"an extra CPU replica adds {extra:.0f} MB, {extra / r['blipserve serve, fp32']['weights_mb']:.1%} of the "
          f"weights (one shared copy)")
    if bf16:
        print(f"blipserve bf16 / fp32 in-process:                     "
              f"{fps['blipserve in-process, bf16'] / inproc:5.2f}x frames/s; serve RSS / weights "
              f"{r['blipserve serve, bf16']['rss_mb'] / r['blipserve serve, bf16']['weights_mb']:.2f} (bf16)")
        print(f"eager PyTorch bf16 / fp32:                            "
              f"{fps['eager PyTorch, same algorithm, bf16'] / fps['eager PyTorch, same algorithm, fp32']:5.2f}x "
              f"frames/s (what this CPU's bfloat16 matrix products give plain PyTorch)")
    worst = max(report["others_cpu_share"] for _, report in rows)
    if worst > 0.05:
        print(f"warning: other processes took up to {worst:.0%} of the CPU during a measurement: the figures are skewed")
    print(f"make bench took {time.time() - started:.0f} s; reports and logs in {args.out}")
    return 0 if ok_speed and ok_share else 1


def ref_versions(python: str) -> str:
    out = subprocess.run([python, "-c", "import torch, transformers; print(transformers.__version__, torch.__version__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    return f"{out[0]}, torch {out[1]}"


if __name__ == "__main__":
    sys.exit(main())
