"""A tiny randomly initialised CLIP model for tests, saved like a real one.

The folder contains what `CLIPModel.save_pretrained` and `CLIPImageProcessor.save_pretrained`
write, so the encoder loads it through the same code path as a downloaded model. The image
embeddings are 512-dimensional like ViT-B/32, but the weights are random, so rankings made
with this model mean nothing. config.json carries `"plant_id_test_model": true`, which the
encoder reads to set `is_test_model` and log a warning.

Usage: python tests/tiny_model.py DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Key added to config.json. shared.encoder reads the same key.
TEST_MODEL_KEY = "plant_id_test_model"

PROJECTION_DIM = 512
SEED = 0


def write_tiny_clip(folder: str | Path) -> Path:
    """Write a tiny seeded CLIP model and its image processor config into `folder`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    text_config = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 77,
        # Token ids must lie inside the small vocabulary.
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "projection_dim": PROJECTION_DIM,
    }
    # One layer over 16-pixel patches: of the small random configurations tried, this one
    # kept a reference photo's augmented views closest to each other and furthest from
    # other photos (measured on the sample photos), so a photo queried as itself ranks first.
    vision_config = {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "patch_size": 16,
        "image_size": 224,
        "projection_dim": PROJECTION_DIM,
    }
    config = CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=PROJECTION_DIM,
    )

    torch.manual_seed(SEED)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)

    # Default CLIP settings: shortest edge 224, centre crop 224, bicubic, CLIP mean and std.
    CLIPImageProcessor().save_pretrained(folder)

    config_path = folder / "config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved[TEST_MODEL_KEY] = True
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/tiny_model.py DIR", file=sys.stderr)
        return 2

    folder = write_tiny_clip(argv[0])
    print(f"wrote a tiny random CLIP test model to {folder}:")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name} ({path.stat().st_size} bytes)")
    print("its embeddings are 512-dimensional but random, so rankings made with it mean nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
