"""`make fidelity`: what each precision costs in answers, on the base-size model and real photographs.

    python benches/fidelity.py [--model models/base-random] [--bf16-model models/base-random-bf16]
                               [--int8-model models/base-random-int8]

The reference is transformers in float32 on the float32 export's weights (models/reference.py:
each question asked alone, greedy `generate`, and P(yes) of the first decoding step). blipserve
answers the same frames with `blipserve ask` (a frame's questions as one batch) from each export
of those weights: float32, bfloat16 and int8 (the exports share the seed, so the weights are the
same). Frames: real photographs, the ones bundled in scikit-image's wheel (a cat, a coffee cup,
an astronaut, a rocket, a motorcycle: the wheel is fetched once with pip into a cache and only
its pictures are read, nothing is installed), and models/sample-frame.jpg.

Prints, per precision: comparisons, max and mean |dP(yes)|, yes/no answers that flip at 0.5,
generated answers identical to transformers' (token ids) and first tokens that agree; and how
much a question's P(yes) moves when it is asked alone rather than with the frame's other
questions (int8 quantises a batch's activations with one scale). Exits 1 when float32 is not
token-identical to transformers or its P(yes) differs by more than 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

QUESTIONS = [
    "is the dog barking?",
    "is there a cat in the picture?",
    "is the pet asleep on the sofa?",
    "is anyone eating?",
    "is the animal looking at the camera while it plays with a toy?",
]
# scikit-image's bundled photographs (public domain or CC0, per its data README).
PHOTO_WHEEL = "scikit-image==0.25.2"
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png"]
MAX_LENGTH = 20
FLOAT32_MAX_DP = 1e-5


def log(msg: str) -> None:
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def photographs(python: str, out: Path) -> list[Path]:
    """The photographs, extracted from the scikit-image wheel (downloaded once into a cache keyed
    by its version)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "blipserve" / PHOTO_WHEEL.replace("==", "-")
    wheels = sorted(cache.glob("scikit_image-*.whl"))
    if not wheels:
        log(f"fetching {PHOTO_WHEEL} (its pictures only) into {cache}")
        subprocess.run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "--dest", str(cache), PHOTO_WHEEL], check=True)
        wheels = sorted(cache.glob("scikit_image-*.whl"))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in PHOTOS:
            path = out / name
            path.write_bytes(wheel.read(f"skimage/data/{name}"))
            paths.append(path)
    return paths


def reference(python: str, repo: Path, model: str, frames: list[Path], out: Path) -> list[dict]:
    """transformers' answers, one per (frame, question), frame-major."""
    pairs = out / "pairs.json"
    pairs.write_text(json.dumps([{"image": str(f), "question": q} for f in frames for q in QUESTIONS]))
    log(f"transformers float32: {len(frames) * len(QUESTIONS)} questions, each alone")
    done = subprocess.run([python, str(repo / "models/reference.py"), "answers", "--model", model,
                           "--pairs", str(pairs), "--max-length", str(MAX_LENGTH)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)["answers"]


def ask(blipserve: str, model: str, frame: Path, mode: str, questions: list[str]) -> list[dict]:
    done = subprocess.run([blipserve, "ask", "--model", model, "--image", str(frame), "--mode", mode, *questions],
                          check=True, capture_output=True, text=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def measure(blipserve: str, model: str, frames: list[Path], want: list[dict]) -> dict:
    """blipserve's answers from one export against transformers'."""
    dps, flips, identical, first, alone = [], 0, 0, 0, []
    for fi, frame in enumerate(frames):
        yes_no = ask(blipserve, model, frame, "yesno", QUESTIONS)
        generated = ask(blipserve, model, frame, "generate", QUESTIONS)
        by_itself = ask(blipserve, model, frame, "yesno", QUESTIONS[-1:])[0]
        alone.append(abs(by_itself["probability"] - yes_no[-1]["probability"]))
        for qi in range(len(QUESTIONS)):
            ref = want[fi * len(QUESTIONS) + qi]
            p, ref_p = yes_no[qi]["probability"], ref["probability"]
            dps.append(abs(p - ref_p))
            flips += (p >= 0.5) != (ref_p >= 0.5)
            ids, ref_ids = generated[qi]["token_ids"], ref["generated_ids"][1:]
            identical += ids == ref_ids
            first += ids[:1] == ref_ids[:1]
    n = len(dps)
    return {"comparisons": n, "max_dp": max(dps), "mean_dp": sum(dps) / n, "flips": flips,
            "identical": identical, "first_token": first, "alone_max_dp": max(alone)}


def main(argv=None) -> int:
    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(repo / "models/base-random"), help="the float32 export (and reference weights)")
    p.add_argument("--bf16-model", default=str(repo / "models/base-random-bf16"))
    p.add_argument("--int8-model", default=str(repo / "models/base-random-int8"))
    p.add_argument("--blipserve", default=str(repo / "target/release/blipserve"))
    p.add_argument("--python", default=sys.executable, help="Python of the pinned environment")
    p.add_argument("--out", type=Path, default=repo / "target/fidelity")
    args = p.parse_args(argv)
    started = time.time()
    frames = photographs(args.python, args.out / "photos") + [repo / "models/sample-frame.jpg"]
    want = reference(args.python, repo, args.model, frames, args.out)
    results = {}
    for precision, model in [("float32", args.model), ("bfloat16", args.bf16_model), ("int8", args.int8_model)]:
        if not Path(model, "manifest.json").is_file():
            log(f"no {model}: {precision} skipped (make {model}/manifest.json)")
            continue
        log(f"blipserve {precision}: {model}")
        results[precision] = measure(args.blipserve, model, frames, want)
    (args.out / "fidelity.json").write_text(json.dumps(results, indent=2))

    print()
    print(f"make fidelity: {Path(args.model).name} against transformers float32 on the same weights; "
          f"{len(frames)} frames ({', '.join(f.name for f in frames)}) x {len(QUESTIONS)} questions; "
          f"generate up to {MAX_LENGTH - 1} new tokens")
    print()
    print("| precision | comparisons | max |dP(yes)| | mean |dP(yes)| | flips at 0.5 | generate identical | "
          "first token | asked alone vs batched, max |dP| |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for precision, r in results.items():
        n = r["comparisons"]
        print(f"| {precision} | {n} | {r['max_dp']:.2e} | {r['mean_dp']:.2e} | {r['flips']} | "
              f"{r['identical']} of {n} | {r['first_token']} of {n} | {r['alone_max_dp']:.2e} |")
    print()
    fp32 = results["float32"]
    ok = fp32["max_dp"] <= FLOAT32_MAX_DP and fp32["identical"] == fp32["comparisons"]
    print(f"float32 against transformers: {'token-identical' if fp32['identical'] == fp32['comparisons'] else 'TOKENS DIFFER'}, "
          f"max |dP| {fp32['max_dp']:.2e} (bound {FLOAT32_MAX_DP:g}: {'met' if ok else 'MISSED'})")
    print(f"make fidelity took {time.time() - started:.0f} s; answers in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
