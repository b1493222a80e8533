"""Reference for `clipfleet bench train --reference-python`: OpenCLIP's training step.

Builds open_clip.model.CLIP from an OpenCLIP model-config JSON, then times full fp32 steps
(forward, ClipLoss, backward, torch.optim.AdamW) on random data already on the device, the
same work `clipfleet bench train` does. Prints one JSON line.

    python scripts/bench_openclip_train.py --config CFG.json --batch-size 128 --steps 20 --warmup 3
"""
import argparse
import contextlib
import json
import time

import torch
import open_clip
from open_clip.loss import ClipLoss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16", "pure_bf16"])
    a = ap.parse_args()
    # As open_clip_train/main.py: TF32 on.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    with open(a.config) as f:
        cfg = json.load(f)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**cfg).to(dev).train()
    if a.precision == "pure_bf16":
        model = model.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2,
                            fused=dev.type == "cuda")
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.precision == "amp_bf16" \
        else contextlib.nullcontext
    loss_fn = ClipLoss()
    s = cfg["vision_cfg"]["image_size"]
    ctx = cfg["text_cfg"].get("context_length", 77)
    vocab = cfg["text_cfg"].get("vocab_size", 49408)
    img = torch.randn(a.batch_size, 3, s, s, device=dev)
    if a.precision == "pure_bf16":
        img = img.to(torch.bfloat16)
    txt = torch.randint(1, vocab - 1, (a.batch_size, ctx), device=dev)

    def step():
        with autocast():
            img_f, txt_f, scale = model(img, txt)
            loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    dt = time.perf_counter() - t
    print(json.dumps({
        "reference": f"open_clip {open_clip.__version__} / torch {torch.__version__}",
        "samples_per_second": a.batch_size * a.steps / dt,
        "ms_per_step": 1000 * dt / a.steps,
        "precision": a.precision,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
    }), flush=True)


if __name__ == "__main__":
    main()
