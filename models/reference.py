"""The Python reference the parity tests compare blipserve with: plain transformers, no tricks.

    python models/reference.py pixels IMAGE...
        BlipImageProcessor (PIL path) on each image: the resized 8-bit pixels (before rescale
        and normalisation, HWC) and the final pixel_values (CHW float32), base64-encoded.
    python models/reference.py answers --model DIR --pairs PAIRS.json [--max-length 20]
        For each {"image", "question"} pair, asked alone, as a transformers user would:
        BlipForQuestionAnswering.generate (greedy) token ids, and the first decoding step's
        logits turned into P(yes | yes or no) and the full-vocabulary P(yes), P(no).

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys

import numpy as np
import torch
from PIL import Image


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def pixels(paths: list[str]) -> dict:
    from transformers import BlipImageProcessor

    processor = BlipImageProcessor(size={"height": 384, "width": 384})
    out = []
    for path in paths:
        image = Image.open(path)
        resized = processor(image, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
        final = processor(image, return_tensors="np")["pixel_values"][0]
        hwc = np.rint(resized.transpose(1, 2, 0)).astype(np.uint8)
        out.append({
            "path": path,
            "mode": image.mode,
            "size": list(image.size),
            "resized_hwc_u8": b64(hwc),
            "pixel_values_chw_f32": b64(final.astype(np.float32)),
        })
    return {"images": out}


def answers(model_dir: str, pairs: list[dict], max_length: int) -> dict:
    from transformers import BlipForQuestionAnswering, BlipProcessor

    model = BlipForQuestionAnswering.from_pretrained(model_dir).eval()
    processor = BlipProcessor.from_pretrained(model_dir)
    tcfg = model.config.text_config
    yes = processor.tokenizer.convert_tokens_to_ids("yes")
    no = processor.tokenizer.convert_tokens_to_ids("no")
    results = []
    with torch.no_grad():
        for pair in pairs:
            image = Image.open(pair["image"])
            inputs = processor(images=image, text=pair["question"], return_tensors="pt")
            generated = model.generate(**inputs, max_length=max_length, do_sample=False, num_beams=1)
            # The first decoding step, exactly as generate computes it.
            image_embeds = model.vision_model(pixel_values=inputs["pixel_values"])[0]
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
            question = model.text_encoder(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
            )[0]
            start = torch.full((1, 1), tcfg.bos_token_id, dtype=torch.long)
            logits = model.text_decoder(
                input_ids=start,
                encoder_hidden_states=question,
                encoder_attention_mask=torch.ones(question.shape[:-1], dtype=torch.long),
            ).logits[0, -1].double()
            probs = torch.softmax(logits, dim=-1)
            results.append({
                "question": pair["question"],
                "input_ids": inputs["input_ids"][0].tolist(),
                "generated_ids": generated[0].tolist(),
                "answer": processor.decode(generated[0], skip_special_tokens=True),
                "probability": torch.sigmoid(logits[yes] - logits[no]).item(),
                "p_yes": probs[yes].item(),
                "p_no": probs[no].item(),
            })
    return {"answers": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    px = sub.add_parser("pixels")
    px.add_argument("images", nargs="+")
    an = sub.add_parser("answers")
    an.add_argument("--model", required=True)
    an.add_argument("--pairs", required=True)
    an.add_argument("--max-length", type=int, default=20)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.command == "pixels":
        result = pixels(args.images)
    else:
        with open(args.pairs) as f:
            result = answers(args.model, json.load(f), args.max_length)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
