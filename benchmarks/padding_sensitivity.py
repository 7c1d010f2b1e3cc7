"""How much a model's answer at real positions changes when its input is padded further: the measurements
behind the refusals of static-shape detection and of Funnel's token outputs.

    python benchmarks/padding_sensitivity.py

Tiny random models of the test matrices (tests/test_vision.py, tests/test_architectures.py); each line prints
the max abs difference between the model on an input alone and on the same input padded (masked) into a
larger canvas or sequence, at real pixels / real tokens only.
"""

from __future__ import annotations

import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def main() -> int:
    warnings.filterwarnings("ignore")
    import torch
    from test_architectures import BY_NAME, FE, TC
    from test_architectures import build as build_text
    from test_vision import VISION_BY_NAME
    from test_vision import build as build_vision

    torch.manual_seed(0)
    pixels = torch.randn(1, 3, 32, 40)
    canvas = torch.zeros(1, 3, 48, 48)
    canvas[:, :, :32, :40] = pixels
    mask = torch.zeros(1, 48, 48, dtype=torch.long)
    mask[:, :32, :40] = 1
    for name in ("DETR", "YOLOS"):
        model, _ = build_vision(VISION_BY_NAME[name], "object-detection")
        with torch.no_grad():
            if name == "DETR":
                alone = model(pixel_values=pixels, pixel_mask=torch.ones(1, 32, 40, dtype=torch.long))
                padded = model(pixel_values=canvas, pixel_mask=mask)
            else:
                alone, padded = model(pixel_values=pixels), model(pixel_values=canvas)
        print(f"{name} object-detection, 32x40 image alone vs padded into 48x48: logits "
              f"{(alone.logits - padded.logits).abs().max().item():.2e}, pred_boxes "
              f"{(alone.pred_boxes - padded.pred_boxes).abs().max().item():.2e}")
    ids = torch.randint(5, 60, (2, 23))
    real = torch.ones(2, 23, dtype=torch.long)
    real[1, 15:] = 0
    long_ids = torch.zeros(2, 64, dtype=torch.long)
    long_ids[:, :23] = ids
    long_mask = torch.zeros(2, 64, dtype=torch.long)
    long_mask[:, :23] = real
    keep = real.bool()
    for arch, task in (("Funnel", FE), ("Funnel", TC), ("Longformer", FE), ("DeBERTa", FE), ("ConvBERT", FE)):
        model, _ = build_text(BY_NAME[arch], task)
        with torch.no_grad():
            a = model(input_ids=ids, attention_mask=real)
            b = model(input_ids=long_ids, attention_mask=long_mask)
        if task == FE:
            diff = (a.last_hidden_state[keep] - b.last_hidden_state[:, :23][keep]).abs().max().item()
        else:
            diff = (a.logits - b.logits).abs().max().item()
        print(f"{arch} {task}, 2x23 alone vs padded to 64 tokens, real tokens: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
