"""The baseline `make bench` compares blipserve with: BLIP VQA served the way a team would write
it with transformers alone. Each question is answered on its own, processor then `generate`,
as transformers' documentation shows; nothing is shared between the questions of a frame.

    python benches/reference_server.py --model models/base-random [--port 8091]

POST /v1/detect takes what blipserve's does (multipart `image` and repeated `question` fields,
or JSON {"image": base64, "questions": [...]}) and answers {"answers": [{"question", "answer"}]}.
`/v1/detect?max_new_tokens=N` caps the answers at N tokens (generate's default limit is 19 after
[DEC]; blip-vqa-base answers a yes/no question in 2, "yes" and [SEP], which a model with random
weights never does). GET /health answers 200 once the model is loaded.

Only the standard library besides torch, transformers and Pillow (what the pinned environment
has). torch uses every core (its default); requests are answered one at a time, each with all
the cores, unless --overlap lets them run at once (torch's threads then compete for the cores).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import threading
import time
import urllib.parse
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from PIL import Image
from transformers import BlipForQuestionAnswering, BlipProcessor


class BadRequest(Exception):
    pass


def parse_detect(content_type: str, body: bytes) -> tuple[bytes, list[str]]:
    """The image bytes and the questions of a multipart or JSON detect request."""
    mime = content_type.split(";")[0].strip().lower()
    if mime == "application/json":
        try:
            doc = json.loads(body)
            image = base64.b64decode(doc["image"].split(";base64,")[-1])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadRequest(f"bad JSON request: {e}")
        questions = doc.get("questions") or []
    elif mime == "multipart/form-data":
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        if not message.is_multipart():
            raise BadRequest("bad multipart body")
        image, questions = None, []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "image":
                image = part.get_payload(decode=True)
            elif name in ("question", "questions"):
                questions.append(part.get_payload(decode=True).decode("utf-8"))
    else:
        raise BadRequest(f"unsupported content type {content_type!r}")
    if not image:
        raise BadRequest("no image")
    if not questions:
        raise BadRequest("no question")
    return image, questions


def generate_limits(query: str) -> dict:
    """`generate` keyword arguments from the URL's query: max_new_tokens, or none."""
    values = urllib.parse.parse_qs(query).get("max_new_tokens")
    if not values:
        return {}
    try:
        return {"max_new_tokens": max(1, int(values[0]))}
    except ValueError:
        raise BadRequest(f"max_new_tokens {values[0]!r} is not a number")


class Reference:
    def __init__(self, model_dir: str, overlap: bool):
        self.processor = BlipProcessor.from_pretrained(model_dir)
        self.model = BlipForQuestionAnswering.from_pretrained(model_dir).eval()
        self.lock = None if overlap else threading.Lock()

    def answer(self, image_bytes: bytes, questions: list[str], limits: dict) -> list[dict]:
        image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        answers = []
        for question in questions:
            inputs = self.processor(images=image, text=question, return_tensors="pt")
            with torch.no_grad():
                output = self.model.generate(**inputs, **limits)
            answers.append({"question": question, "answer": self.processor.decode(output[0], skip_special_tokens=True)})
        return answers

    def answer_in_turn(self, image_bytes: bytes, questions: list[str], limits: dict) -> list[dict]:
        if self.lock is None:
            return self.answer(image_bytes, questions, limits)
        with self.lock:
            return self.answer(image_bytes, questions, limits)


def handler(reference: Reference):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the load tester's client expects

        def reply(self, status: int, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self.reply(200, {"status": "ok"})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/v1/detect":
                self.reply(404, {"error": "not found"})
                return
            started = time.perf_counter()
            try:
                limits = generate_limits(url.query)
                image, questions = parse_detect(self.headers.get("content-type", ""), body)
                answers = reference.answer_in_turn(image, questions, limits)
            except BadRequest as e:
                self.reply(400, {"error": str(e)})
                return
            except Exception as e:  # a bad image, or the model failing: the client sees it
                self.reply(500, {"error": f"{type(e).__name__}: {e}"})
                return
            self.reply(200, {"answers": answers, "total_ms": round((time.perf_counter() - started) * 1e3, 3)})

        def log_message(self, format, *args):
            pass  # one line per request would drown the benchmark's output

    return Handler


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory written by models/export.py")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads [default: the cores]")
    p.add_argument("--overlap", action="store_true", help="let requests run at once instead of one at a time")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    reference = Reference(args.model, args.overlap)
    server = ThreadingHTTPServer((args.host, args.port), handler(reference))
    server.daemon_threads = True
    print(
        f"reference: listening on http://{args.host}:{server.server_port} (transformers, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {'overlapping' if args.overlap else 'one request at a time'})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
