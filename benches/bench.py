"""`make bench`: blipserve against plain transformers on the base-size random model.

    python benches/bench.py [--model models/base-random] [--concurrency 2] ...

1. The reference server (benches/reference_server.py: processor then `generate`, per question)
   under `blipserve loadtest`.
2. `blipserve serve` on the same model directory, with its defaults, under the same load.
3. `blipserve throughput`: the same frames in-process, no HTTP, in batches the size of the
   server's mean batch, to show what the server layer costs.

The same frames (synthetic 1920x1080 JPEGs, written here) and the same three questions go to
both servers at the same concurrency. Prints frames/s, p50 and p99 of each, the ratios, and
whether the targets hold (blipserve >= 3x the reference; the server >= 0.95x in-process); exits
1 when one does not. Other processes competing for the CPU skew every figure: each phase reports
how much of the machine they took.
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


def main(argv=None) -> int:
    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(repo / "models/base-random"))
    p.add_argument("--blipserve", default=str(repo / "target/release/blipserve"))
    p.add_argument("--python", default=sys.executable, help="Python of the pinned environment")
    p.add_argument("--out", type=Path, default=repo / "target/bench", help="frames, reports and logs")
    p.add_argument("--concurrency", type=int, default=2, help="clients of each load test")
    p.add_argument("--reference-requests", type=int, default=8, help="frames measured on the reference")
    p.add_argument("--requests", type=int, default=24, help="frames measured on blipserve and in-process")
    p.add_argument("--max-phase-s", type=float, default=180, help="longest a load test may run")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `blipserve serve` flag (repeatable)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log(f"{os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    frames = write_frames(args.out / "frames", 4)

    reference = Server("reference", [args.python, str(repo / "benches/reference_server.py"), "--model", args.model,
                                     "--port", str(port := free_port())], port, "/health", args.out / "reference.log")
    try:
        ref = load_test(args, reference, frames, args.reference_requests, args.out / "reference.json")
        # What blip-vqa-base itself costs: it answers a yes/no question in 2 tokens, "yes" and [SEP].
        ref_short = load_test(args, reference, frames, args.reference_requests, args.out / "reference-2-tokens.json",
                              "?max_new_tokens=2")
    finally:
        reference.stop()

    # blipserve's defaults; only the request deadline is raised, so that a machine slowed down by
    # something else shows in the figures rather than as 504s.
    serve_command = [args.blipserve, "serve", "--model", args.model, "--port", str(port := free_port()),
                     "--request-timeout-ms", "120000", *args.serve_arg]
    server = Server("blipserve", serve_command, port, "/ready", args.out / "blipserve.log")
    try:
        ours = load_test(args, server, frames, args.requests, args.out / "blipserve.json")
        info = json.loads(server.get("/v1/info"))
    finally:
        server.stop()

    # In-process: batches of the server's mean batch, rounded; the threads of one server replica.
    batch = max(1, round(ours["mean_batch_frames"]))
    threads = info["threads_per_replica"]
    command = [args.blipserve, "throughput", "--model", args.model, "--frames", str(args.requests),
               "--batch-frames", str(batch), "--threads", str(threads), "--json", str(args.out / "in-process.json")]
    for f in frames:
        command += ["--image", str(f)]
    for q in QUESTIONS:
        command += ["--question", q]
    share = CpuShare()
    cpu0, t0 = children_cpu_s(), time.time()
    inproc = run(command, args.out / "in-process.json")
    inproc["others_cpu_share"] = share.others(children_cpu_s() - cpu0, time.time() - t0)

    speed_up = ours["throughput_per_s"] / ref["throughput_per_s"]
    speed_up_short = ours["throughput_per_s"] / ref_short["throughput_per_s"]
    server_share = ours["throughput_per_s"] / inproc["throughput_per_s"]
    rows = [
        ("reference: transformers", ref),
        ("reference, answers cut at 2 tokens", ref_short),
        ("blipserve serve", ours),
        ("blipserve in-process, no HTTP", inproc),
    ]
    print()
    print(f"make bench: {Path(args.model).name}, fp32, {os.cpu_count()} cores, {len(frames)} different 1920x1080 JPEG "
          f"frames x {len(QUESTIONS)} questions, {args.concurrency} concurrent clients (blipserve loadtest, closed loop)")
    print(f"  reference: benches/reference_server.py, transformers {ref_versions(args.python)}: BlipProcessor then "
          f"generate per question (random weights never stop early: 19 tokens), torch threads = cores, one request "
          f"at a time")
    print(f"  blipserve: {' '.join(serve_command[2:])}: {info['replicas']} replica x {threads} threads, max batch "
          f"{info['batching']['max_batch_frames']} frames (mean batch {ours['mean_batch_frames']:.2f}), yes/no answers "
          f"(the default mode: one decoder step)")
    print(f"  in-process: blipserve throughput --batch-frames {batch} --threads {threads} (decode, resize, tokenise, "
          f"pipeline)")
    print()
    print(f"| {'':34} | {'frames':>6} | {'frames/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'CPU taken by others':>19} |")
    print(f"| {'-' * 34} | {'-' * 5}: | {'-' * 7}: | {'-' * 6}: | {'-' * 6}: | {'-' * 18}: |")
    for name, r in rows:
        n = r.get("ok", r.get("frames"))
        lat = r.get("latency_ms")
        p50, p99 = (f"{lat['p50']:.0f}", f"{lat['p99']:.0f}") if lat else ("-", "-")
        print(f"| {name:34} | {n:>6} | {r['throughput_per_s']:>8.3f} | {p50:>7} | {p99:>7} | "
              f"{r['others_cpu_share']:>19.0%} |")
    print()
    ok_speed = speed_up >= SPEED_UP_TARGET
    ok_share = server_share >= SERVER_SHARE_TARGET
    print(f"blipserve / reference:          {speed_up:5.2f}x frames/s (target >= {SPEED_UP_TARGET}x: "
          f"{'met' if ok_speed else 'MISSED'})")
    print(f"blipserve / reference, 2 tokens: {speed_up_short:5.2f}x frames/s (what to expect with blip-vqa-base)")
    print(f"blipserve serve / in-process:    {server_share:5.3f} (target >= {SERVER_SHARE_TARGET}: "
          f"{'met' if ok_share else 'MISSED'})")
    worst = max(r["others_cpu_share"] for _, r in rows)
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
