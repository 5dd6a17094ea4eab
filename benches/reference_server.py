"""The baseline `make bench` compares blipserve with: BLIP VQA served the way a team would write
it with transformers alone. Each question is answered on its own, processor then `generate`,
as transformers' documentation shows; nothing is shared between the questions of a frame.

    python benches/reference_server.py --model models/base-random [--port 8091]

POST /v1/detect takes what blipserve's does (multipart `image` and repeated `question` fields,
or JSON {"image": base64, "questions": [...]}) and answers {"answers": [{"question", "answer"}]}.
`/v1/detect?max_new_tokens=N` caps the answers at N tokens (generate's default limit is 19 after
[DEC]; blip-vqa-base answers a yes/no question in 2, "yes" and [SEP], which a model with random
weights never does); `batch=1` has one `generate` answer all of a frame's questions at once.
`/v1/detect?eager=1` answers with blipserve's algorithm written in plain PyTorch: the vision model
once per frame, the questions through the text encoder as one batch, one decoder step from [DEC],
P(yes) of yes/no (what a skilled user would write without blipserve). `--dtype bfloat16` runs the
model in bfloat16; `--dtype int8` swaps its linear layers but the language-model head for torch's
dynamically quantised int8 ones, as `models/export.py --quantize int8` does. GET /health answers
200 once the model is loaded.

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
from pathlib import Path

import torch
from PIL import Image
from transformers import BlipForQuestionAnswering, BlipProcessor

# The int8 export's own quantisation (the same layers, the same scheme), so that the eager int8
# baseline runs what blipserve's int8 export runs.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
from export import quantize_linear_layers  # noqa: E402


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


def options(query: str) -> dict:
    """How to answer, from the URL's query: `generate`'s max_new_tokens, `batch`, `eager`."""
    values = urllib.parse.parse_qs(query)
    chosen = {"limits": {}, "batch": values.get("batch") == ["1"], "eager": values.get("eager") == ["1"]}
    if "max_new_tokens" in values:
        try:
            chosen["limits"] = {"max_new_tokens": max(1, int(values["max_new_tokens"][0]))}
        except ValueError:
            raise BadRequest(f"max_new_tokens {values['max_new_tokens'][0]!r} is not a number")
    return chosen


class Reference:
    def __init__(self, model_dir: str, overlap: bool, precision: str):
        self.processor = BlipProcessor.from_pretrained(model_dir)
        self.dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.model = BlipForQuestionAnswering.from_pretrained(model_dir).to(self.dtype).eval()
        if precision == "int8":
            quantize_linear_layers(self.model)
        self.lock = None if overlap else threading.Lock()
        tokens = self.processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
        self.yes, self.no = tokens

    def answer(self, image_bytes: bytes, questions: list[str], how: dict) -> list[dict]:
        image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        if how["eager"]:
            return self.eager(image, questions)
        if how["batch"]:
            inputs = self.processor(images=[image] * len(questions), text=questions, padding=True, return_tensors="pt")
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                output = self.model.generate(**inputs, **how["limits"])
            texts = self.processor.batch_decode(output, skip_special_tokens=True)
            return [{"question": q, "answer": a} for q, a in zip(questions, texts)]
        answers = []
        for question in questions:
            inputs = self.processor(images=image, text=question, return_tensors="pt")
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                output = self.model.generate(**inputs, **how["limits"])
            answers.append({"question": question, "answer": self.processor.decode(output[0], skip_special_tokens=True)})
        return answers

    def eager(self, image: Image.Image, questions: list[str]) -> list[dict]:
        """blipserve's algorithm in plain PyTorch: vision once, questions batched, one decoder step.

        transformers' decoder ignores the question mask (models/README.md, "Question padding"), so
        a padded question's P(yes) here is not blipserve's; the work is the same."""
        m = self.model
        pixels = self.processor.image_processor(image, return_tensors="pt").pixel_values.to(self.dtype)
        text = self.processor.tokenizer(questions, padding=True, return_tensors="pt")
        n = len(questions)
        with torch.inference_mode():
            image_embeds = m.vision_model(pixel_values=pixels, return_dict=False)[0]
            embeds = m.text_encoder(
                input_ids=text.input_ids,
                attention_mask=text.attention_mask,
                encoder_hidden_states=image_embeds.expand(n, -1, -1),
                return_dict=False,
            )[0]
            start = torch.full((n, 1), m.decoder_start_token_id, dtype=torch.long)
            logits = m.text_decoder(
                input_ids=start, encoder_hidden_states=embeds, encoder_attention_mask=text.attention_mask, return_dict=False
            )[0][:, -1].float()
        probs = logits.softmax(-1)
        p_yes = probs[:, self.yes] / (probs[:, self.yes] + probs[:, self.no])
        return [{"question": q, "answer": "yes" if p >= 0.5 else "no", "probability": float(p)} for q, p in zip(questions, p_yes)]

    def answer_in_turn(self, image_bytes: bytes, questions: list[str], how: dict) -> list[dict]:
        if self.lock is None:
            return self.answer(image_bytes, questions, how)
        with self.lock:
            return self.answer(image_bytes, questions, how)


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
                how = options(url.query)
                image, questions = parse_detect(self.headers.get("content-type", ""), body)
                answers = reference.answer_in_turn(image, questions, how)
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
    p.add_argument("--dtype", choices=["float32", "bfloat16", "int8"], default="float32", help="the model's precision")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    reference = Reference(args.model, args.overlap, args.dtype)
    server = ThreadingHTTPServer((args.host, args.port), handler(reference))
    server.daemon_threads = True
    print(
        f"reference: listening on http://{args.host}:{server.server_port} (transformers, torch {torch.__version__}, {args.dtype}, "
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
