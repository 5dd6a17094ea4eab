"""Writes the fuzzers' seed corpus, fuzz/corpus/<target>/, from the inputs the tests use.

    .venv/bin/python scripts/fuzz-seeds.py [fuzz/corpus]

Deterministic (Pillow's encoders and fixed patterns; nothing random, nothing downloaded), so the
committed files are what this writes. Per target:

- image_header, decode: small synthetic frames in every format and colour layout the decoders
  take (JPEG baseline/progressive/grey/CMYK, PNG 1- to 16-bit, palette, interlaced, WebP lossy,
  lossless and animated, GIF, BMP), and the cases of crates/model/tests/bad_images.rs and
  tests/service.rs: corrupt, truncated, headers claiming huge sizes, TIFF/HEIF/JSON, empty.
- detect_body: the content type on the first line, the body after it: multipart and JSON detect
  requests as the tests send them, and refusals (bad base64, unknown fields, wrong content type).
- base64: the JSON image field's encodings (padded or not, data: URL, wrapped lines) and bad ones.
- question: the default and catalogue questions, other scripts, special tokens, too long ones.
- gateway_config: the documented example, the tests' files and their refused variants.
- manifest: models/tiny and models/tiny-static's manifest.json (`make models`) and variants.
"""

import base64
import io
import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent


def frame(w: int, h: int, seed: int = 3) -> Image.Image:
    """A photo-like frame: shading, a hard-edged 'pet' and 'sofa', and noise (as testkit's)."""
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            n = ((x * 0x9E3779B1 ^ y * 0x85EBCA77 ^ seed * 0xC2B2AE3D) & 0xFFFFFFFF) % 25 - 12
            px[x, y] = (
                max(0, min(255, 110 + (x * 7 + seed * 13) % 90 + n)),
                max(0, min(255, 120 + (y * 5 + seed * 3) % 80 + n)),
                max(0, min(255, 100 + ((x + y) * 9) % 70 + n)),
            )
    d = ImageDraw.Draw(img)
    d.ellipse([w * 0.4, h * 0.4, w * 0.8, h * 0.7], fill=(160, 110, 60))
    d.rectangle([w * 0.08, h * 0.4, w * 0.45, h * 0.75], fill=(50, 70, 120))
    return img


def save(img: Image.Image, fmt: str, **opts) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **opts)
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def raw_png(w, h, depth, ctype, interlace=0, plte=None, trns=None, filters=(0,)) -> bytes:
    """A PNG written by hand, for the layouts Pillow does not write (16-bit RGB(A), interlaced,
    low bit depths): scanlines cycling through `filters`, deterministic sample values."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    bits = channels * depth
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    raw = bytearray()
    row_no = 0
    for x0, y0, dx, dy in passes:
        pw, ph = len(range(x0, w, dx)), len(range(y0, h, dy))
        if pw == 0 or ph == 0:
            continue
        for _ in range(ph):
            raw.append(filters[row_no % len(filters)])
            raw.extend((row_no * 31 + i * 7) & 0xFF for i in range((pw * bits + 7) // 8))
            row_no += 1
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")


def png_claiming(w: int, h: int) -> bytes:
    """testkit's png_claiming: a well-formed header claiming w×h, a tiny stream."""
    ihdr = struct.pack(">II", w, h) + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", bytes([0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]))
        + chunk(b"IEND", b"")
    )


def pattern(n: int, mul: int, shift: int) -> bytes:
    return bytes(((i * mul) & 0xFFFFFFFF) >> shift & 0xFF for i in range(n))


def images() -> dict:
    f = frame(48, 32)
    rgba = f.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(f.size))
    small = {}
    jpeg = save(f, "JPEG", quality=90)
    small["jpeg-420-q90.jpg"] = jpeg
    small["jpeg-444-q75.jpg"] = save(f, "JPEG", quality=75, subsampling=0)
    small["jpeg-422.jpg"] = save(f, "JPEG", quality=85, subsampling=1)
    small["jpeg-progressive.jpg"] = save(f, "JPEG", quality=80, progressive=True, optimize=True)
    small["jpeg-grey.jpg"] = save(f.convert("L"), "JPEG", quality=90)
    small["jpeg-odd-size.jpg"] = save(frame(13, 7, 5), "JPEG", quality=90)
    small["jpeg-exif.jpg"] = save(f, "JPEG", quality=60, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")
    small["jpeg-cmyk.jpg"] = save(f.convert("CMYK"), "JPEG", quality=90)
    small["jpeg-truncated.jpg"] = jpeg[: len(jpeg) // 2]
    sof = jpeg.index(b"\xff\xc0")
    huge = bytearray(jpeg)
    huge[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    small["jpeg-claiming-60000x60000.jpg"] = bytes(huge)
    small["jpeg-corrupt.jpg"] = b"\xff\xd8\xff\xe0" + pattern(5000, 2654435761, 13)
    small["jpeg-magic-only.jpg"] = b"\xff\xd8\xff"

    png = save(f, "PNG")
    small["png-rgb.png"] = png
    small["png-rgba.png"] = save(rgba, "PNG")
    small["png-grey.png"] = save(f.convert("L"), "PNG")
    small["png-grey-alpha.png"] = save(rgba.convert("LA"), "PNG")
    small["png-grey-16.png"] = save(f.convert("I").point(lambda v: v * 257).convert("I;16"), "PNG")
    small["png-1bit.png"] = save(f.convert("1"), "PNG")
    small["png-palette-trns.png"] = save(f.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG", transparency=3)
    small["png-rgb-16.png"] = raw_png(9, 6, 16, 2, filters=(0, 1, 2, 3, 4))
    small["png-rgba-16.png"] = raw_png(9, 6, 16, 6, filters=(4, 3, 2, 1, 0))
    small["png-interlaced-rgb.png"] = raw_png(11, 9, 8, 2, interlace=1, filters=(0, 1, 2))
    small["png-interlaced-palette-4bit.png"] = raw_png(10, 10, 4, 3, interlace=1, plte=bytes(range(48)), trns=b"\x00\x80")
    small["png-grey-2bit-trns.png"] = raw_png(7, 5, 2, 0, trns=b"\x00\x01")
    small["png-truncated.png"] = png[: len(png) * 2 // 3]
    small["png-claiming-20000x20000.png"] = png_claiming(20000, 20000)
    small["png-claiming-8000x8000.png"] = png_claiming(8000, 8000)
    small["png-claiming-0x10.png"] = png_claiming(0, 10)
    small["png-corrupt.png"] = b"\x89PNG\r\n\x1a\n" + pattern(5000, 2246822519, 11)

    webp = save(f, "WEBP", quality=80)
    small["webp-lossy.webp"] = webp
    small["webp-lossless.webp"] = save(f, "WEBP", lossless=True)
    small["webp-lossy-alpha.webp"] = save(rgba, "WEBP", quality=70)
    small["webp-lossless-alpha.webp"] = save(rgba, "WEBP", lossless=True)
    small["webp-animated.webp"] = save(
        frame(16, 12, 1), "WEBP", save_all=True, append_images=[frame(16, 12, 2)], duration=100, quality=50
    )
    small["webp-truncated.webp"] = webp[: len(webp) // 2]
    vp8x = bytearray(small["webp-lossy-alpha.webp"])
    if vp8x[12:16] == b"VP8X":
        vp8x[24:30] = (16000 - 1).to_bytes(3, "little") * 2
        small["webp-claiming-16000x16000.webp"] = bytes(vp8x)

    gif = save(f.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "GIF")
    small["gif-plain.gif"] = gif
    small["gif-89a.gif"] = b"GIF89a" + gif[6:]
    small["gif-interlaced.gif"] = save(frame(24, 20, 4).convert("P"), "GIF", interlace=True)
    small["gif-transparent.gif"] = save(f.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "GIF", transparency=2)
    small["gif-animated.gif"] = save(
        frame(16, 12, 1).convert("P"), "GIF", save_all=True, append_images=[frame(8, 6, 2).convert("P")], duration=50
    )
    small["gif-claiming-65535x65535.gif"] = gif[:6] + struct.pack("<HH", 65535, 65535) + gif[10:]
    small["gif-truncated.gif"] = gif[: len(gif) // 2]

    bmp = save(f, "BMP")
    small["bmp-24.bmp"] = bmp
    small["bmp-8-palette.bmp"] = save(f.convert("P"), "BMP")
    small["bmp-1.bmp"] = save(f.convert("1"), "BMP")
    small["bmp-grey.bmp"] = save(f.convert("L"), "BMP")
    small["bmp-32-rgba.bmp"] = save(rgba, "BMP")
    top_down = bytearray(bmp)
    top_down[22:26] = struct.pack("<i", -32)
    small["bmp-top-down.bmp"] = bytes(top_down)
    big = bytearray(bmp)
    big[18:26] = struct.pack("<ii", 30000, 30000)
    small["bmp-claiming-30000x30000.bmp"] = bytes(big)
    small["bmp-truncated.bmp"] = bmp[:200]

    small["tiff.tif"] = b"II*\x00\x08\x00\x00\x00rest of a tiff"
    small["heif.heic"] = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00"
    small["json.txt"] = b'{"not": "an image"}'
    small["garbage.bin"] = b"\xff\xd8\xffgarbage"
    small["nope.txt"] = b"nope"
    small["empty"] = b""
    return small


BOUNDARY = "blipserveBoundary7MA4YWxk"


def multipart(parts, boundary=BOUNDARY) -> bytes:
    out = b""
    for name, value, filename, ctype in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out += disposition.encode() + b"\r\n"
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def detect_bodies(jpeg: bytes, png: bytes) -> dict:
    ct = f"multipart/form-data; boundary={BOUNDARY}".encode()
    image = ("image", jpeg, "frame.jpg", "application/octet-stream")
    q = lambda text: ("question", text.encode(), None, None)  # noqa: E731
    b = lambda name: ("behavior", name.encode(), None, None)  # noqa: E731
    bodies = {
        "multipart-questions-behaviors.txt": ct
        + b"\n"
        + multipart([image, q("is the dog barking?"), q("is the cat on the sofa?"), b("barking"), b("chewing_furniture")]),
        "multipart-generate.txt": ct + b"\n" + multipart([image, q("what is the dog doing?"), ("mode", b"generate", None, None)]),
        "multipart-plural-names-png.txt": ct
        + b"\n"
        + multipart([("image", png, "frame.png", "image/png"), ("questions", b"is it?", None, None), ("behaviors", b"eating", None, None)]),
        "multipart-quoted-boundary.txt": b'Multipart/Form-Data; charset=utf-8; boundary="quoted-b"\n'
        + multipart([image, q("is it?")], boundary="quoted-b"),
        "multipart-unknown-field.txt": ct + b"\n" + multipart([image, ("colour", b"red", None, None)]),
        "multipart-no-image.txt": ct + b"\n" + multipart([q("is it?")]),
        "multipart-empty-image.txt": ct + b"\n" + multipart([("image", b"", "frame.jpg", None), q("is it?")]),
        "multipart-bad-image.txt": ct + b"\n" + multipart([("image", b"\xff\xd8\xffgarbage", "f.jpg", None), q("q?")]),
        "multipart-no-boundary.txt": b"multipart/form-data\n" + multipart([image, q("is it?")]),
        "multipart-unterminated.txt": ct + b"\n" + multipart([image, q("is it?")])[:-40],
        "multipart-too-many-questions.txt": ct + b"\n" + multipart([image] + [q("is it?")] * 17),
        "multipart-bad-mode.txt": ct + b"\n" + multipart([image, q("is it?"), ("mode", b"poetry", None, None)]),
    }
    b64 = base64.b64encode(jpeg).decode()
    js = lambda obj: json.dumps(obj).encode()  # noqa: E731
    bodies |= {
        "json-questions-behaviors.txt": b"application/json\n"
        + js({"image": b64, "questions": ["is the dog barking?"], "behaviors": ["barking", "on_sofa"]}),
        "json-generate.txt": b"application/json; charset=utf-8\n"
        + js({"image": b64, "questions": ["what is the dog doing?"], "mode": "generate"}),
        "json-data-url-unpadded.txt": b"APPLICATION/JSON\n"
        + js({"image": "data:image/png;base64," + base64.b64encode(png).decode().rstrip("="), "questions": ["q?"]}),
        "json-wrapped-base64.txt": b"application/json\n"
        + js({"image": base64.encodebytes(jpeg).decode(), "behaviors": ["barking"]}),
        "json-bad-base64.txt": b"application/json\n" + js({"image": "not*base64!", "questions": ["is it?"]}),
        "json-tiff.txt": b"application/json\n" + js({"image": base64.b64encode(b"II*\0tiff body").decode(), "questions": ["is it?"]}),
        "json-unknown-field.txt": b"application/json\n" + js({"image": b64, "question": "is it?"}),
        "json-no-question.txt": b"application/json\n" + js({"image": b64}),
        "json-empty-question.txt": b"application/json\n" + js({"image": b64, "questions": ["  "]}),
        "json-long-question.txt": b"application/json\n" + js({"image": b64, "questions": ["why " * 70]}),
        "json-unknown-behavior.txt": b"application/json\n" + js({"image": b64, "behaviors": ["juggling"]}),
        "json-not-json.txt": b"application/json\n{\"image\": ",
        "json-wrong-types.txt": b"application/json\n" + js({"image": 5, "questions": "is it?"}),
        "text-plain.txt": b"text/plain\nimage=1",
        "no-content-type.txt": js({"image": b64, "questions": ["is it?"]}),
    }
    return bodies


def base64_texts(jpeg: bytes) -> dict:
    padded = base64.b64encode(jpeg[:120]).decode()
    return {
        "padded.txt": padded.encode(),
        "unpadded.txt": padded.rstrip("=").encode(),
        "data-url.txt": ("data:image/jpeg;base64," + padded).encode(),
        "wrapped.txt": base64.encodebytes(jpeg[:200]),
        "spaces-tabs.txt": b" QUJD\tREVG \n",
        "url-safe-alphabet.txt": b"-_-_",
        "bad-char.txt": b"not*base64!",
        "padding-only.txt": b"====",
        "one-char.txt": b"A",
        "excess-padding.txt": b"QQ===",
        "data-url-no-base64.txt": b"data:image/png,QUJD",
        "empty.txt": b"",
    }


def questions() -> dict:
    return {
        "barking.txt": "is the dog barking?",
        "chewing.txt": "is the dog chewing the furniture?",
        "sofa.txt": "is the pet on the sofa?",
        "generate.txt": "what is the dog doing?",
        "accents.txt": "le chien est-il sur le canapé ? ça va, naïve Zoë",
        "cjk.txt": "狗在叫吗？ 猫は寝ていますか",
        "emoji-zwj.txt": "is the 🐕‍🦺 on the 🛋️? 👨‍👩‍👧",
        "rtl-combining.txt": "هل الكلب ينبح؟ e\u0301\u0302\u0303 \u200f\u202e",
        "special-tokens.txt": "[CLS] [SEP] [PAD] [DEC] [UNK] [MASK] yes no",
        "whitespace.txt": " \t\r\n \u00a0\u2003 ",
        "controls.txt": "is\x00 the\x07 dog\x1b[31m barking?\x7f",
        "too-long.txt": "is the dog " * 200 + "barking?",
        "long-word.txt": "a" * 600,
        "punctuation.txt": "?!?!...,,,;;::''\"\"((()))",
    } | {"invalid-utf8.txt": b"is the \xff\xfe dog \xc3( barking?"}


GATEWAY_EXAMPLE = """listen = "0.0.0.0"
port = 8080
[[pools]]
name = "inf2"
backend = "neuron"      # neuron | gpu | cpu
weight = 100
urls = ["http://internal-inf2-lb.example:8080"]
load_balancer = true
[[pools]]
name = "gpu"
backend = "gpu"
weight = 0
urls = ["http://internal-gpu-lb.example:8080/"]
"""


def gateway_configs() -> dict:
    pool = '[[pools]]\nname = "a"\nbackend = "gpu"\nweight = 1\nurls = ["http://h:1"]\n'
    return {
        "example.toml": GATEWAY_EXAMPLE,
        "tests-two-pools.toml": 'listen = "127.0.0.1"\nport = 0\n\n[[pools]]\nname = "cpu"\nbackend = "cpu"\nweight = 3\n'
        'urls = ["http://127.0.0.1:40001", "http://127.0.0.1:40002"]\n\n[[pools]]\nname = "gpu"\nbackend = "gpu"\n'
        'weight = 1\nurls = ["http://127.0.0.1:40003/prefix"]\n',
        "flags.toml": 'listen = "::1"\nport = 9000\nmax_questions = 4\nmax_question_chars = 100\nmax_body_bytes = 1048576\n'
        'max_image_side = 4096\nmax_image_pixels = 1000000\nrequest_timeout_ms = 2500\napi_keys = ["k1", "k2"]\n'
        'admin_key = "admin"\nhealth_interval_ms = 500\nhealth_timeout_ms = 200\neject_ms = 1000\nconnect_timeout_ms = 100\n'
        'max_attempts = 2\nupstream_idle_timeout_ms = 1000\nlb_eject_consecutive = 3\nlb_eject_failure_rate = 0.25\n'
        'lb_eject_min_requests = 10\n' + pool,
        "refused-no-pools.toml": "port = 1\n",
        "refused-backend.toml": pool.replace("gpu", "tpu"),
        "refused-all-weights-zero.toml": pool.replace("weight = 1", "weight = 0"),
        "refused-weight-too-big.toml": pool.replace("weight = 1", "weight = 1000001"),
        "refused-no-urls.toml": pool.replace('["http://h:1"]', "[]"),
        "refused-https.toml": pool.replace("http://", "https://"),
        "refused-not-a-url.toml": pool.replace("http://h:1", "h:1"),
        "refused-credentials.toml": pool.replace("http://h:1", "http://user:pw@h:1/?q#f"),
        "refused-two-named-a.toml": pool + pool.replace("h:1", "h:2").replace("gpu", "cpu"),
        "refused-listed-twice.toml": pool.replace('["http://h:1"]', '["http://h:1", "http://h:1/"]'),
        "refused-unknown-field.toml": pool.replace("urls =", "url ="),
        "refused-bad-name.toml": pool.replace('name = "a"', 'name = "a b/c"'),
        "refused-reload.toml": 'listen = "127.0.0.1"\n[[pools]]\nname = "gpu"\nbackend = "tpu"\n',
        "refused-unknown-setting.toml": "prot = 1\n" + pool,
        "refused-bad-value.toml": 'port = "eighty"\n' + pool,
        "refused-empty-key.toml": 'api_keys = ["a", ""]\n' + pool,
        "refused-table-value.toml": "port = { a = 1 }\n" + pool,
        "refused-not-toml.toml": "port = [\n",
    }


def manifests() -> dict:
    out = {}
    for name in ["tiny", "tiny-static"]:
        path = REPO / "models" / name / "manifest.json"
        if not path.is_file():
            sys.exit(f"{path} is missing: run `make models`")
        out[f"{name}.json"] = path.read_bytes()
    tiny = json.loads(out["tiny.json"])

    def variant(edit):
        m = json.loads(json.dumps(tiny))
        edit(m)
        return json.dumps(m, indent=1).encode()

    out["format-1.json"] = variant(lambda m: m.update(format=1))
    out["resample-bilinear.json"] = variant(lambda m: m["preprocess"].update(resample="bilinear"))
    out["std-zero.json"] = variant(lambda m: m["preprocess"].update(std=[0.2, 0.0, 0.2]))
    out["float16.json"] = variant(lambda m: m.update(dtype="float16"))
    out["token-outside-vocab.json"] = variant(lambda m: m["tokens"].update(dec=10**9))
    out["size-mismatch.json"] = variant(lambda m: m["preprocess"].update(size=[224, 384]))
    out["static-mismatch.json"] = variant(lambda m: m.update(static_shapes=True))
    out["missing-part.json"] = variant(lambda m: m["parts"].pop("text_decoder"))
    out["truncated.json"] = out["tiny.json"][: len(out["tiny.json"]) // 2]
    return out


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "fuzz" / "corpus"
    imgs = images()
    tiny_jpeg = save(frame(16, 12, 9), "JPEG", quality=70)
    tiny_png = save(frame(6, 4, 9), "PNG")
    as_bytes = lambda d: {k: v if isinstance(v, bytes) else v.encode() for k, v in d.items()}  # noqa: E731
    targets = {
        "image_header": imgs,
        "decode": imgs,
        "detect_body": detect_bodies(tiny_jpeg, tiny_png),
        "base64": base64_texts(imgs["jpeg-420-q90.jpg"]),
        "question": as_bytes(questions()),
        "gateway_config": as_bytes(gateway_configs()),
        "manifest": manifests(),
    }
    total = 0
    for target, files in targets.items():
        d = root / target
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for name, data in sorted(files.items()):
            (d / name).write_bytes(data)
            total += len(data)
        print(f"{target}: {len(files)} seeds")
    print(f"{total} bytes in all under {root}")


if __name__ == "__main__":
    main()
