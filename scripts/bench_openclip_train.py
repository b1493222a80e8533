"""Reference for `clipfleet bench train`: OpenCLIP's own training step, with its settings.

Builds open_clip.model.CLIP from an OpenCLIP model-config JSON, then times full training steps
on random data already on the device, as open_clip_train/train.py runs them:

- images arrive as uint8 NHWC [b, H, W, 3] on the device and are normalised there every step
  with OpenAI's mean and std (what open_clip's ToTensor + Normalize transform computes);
  tokens are int64 [b, context_length];
- model.train(); ClipLoss (cache_labels=True), or SigLipLoss with `--loss siglip`;
  `loss(**model_out, output_dict=True)` summed, as train_one_epoch does;
- precision as open_clip_train's `--precision`: fp32, amp_bf16 (torch.autocast to bfloat16)
  or pure_bf16 (bfloat16 weights and bfloat16 images);
- optimizer.zero_grad(), backward, optional torch.nn.utils.clip_grad_norm_(…, 2.0)
  (`--grad-clip-norm`), torch.optim.AdamW with the two parameter groups of
  open_clip_train/main.py (weight decay 0.2 only on parameters with ndim >= 2 that are not
  gains, biases or the logit scale), lr `--lr`, betas (0.9, 0.98), eps 1e-6 (OpenCLIP's ViT
  defaults), fused=True (falls back to the default implementation where fused is refused);
- logit_scale clamped to [0, ln 100] after the step; TF32 on (open_clip_train/main.py).

Prints one JSON line: reference, samples_per_second, ms_per_step, precision,
peak_memory_bytes (torch.cuda.max_memory_allocated over the timed steps; null on the CPU),
device, and the settings used.

    python scripts/bench_openclip_train.py --config CFG.json --batch-size 128 --steps 20 --warmup 3 \\
        [--device cuda] [--precision amp_bf16] [--threads 0] [--lr 5e-4] [--grad-clip-norm 1.0] [--loss clip]
"""
import argparse
import contextlib
import json
import math
import time

import torch
import open_clip
from open_clip.loss import ClipLoss, CoCaLoss, SigLipLoss

# open_clip.constants.OPENAI_DATASET_MEAN / _STD
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# clipfleet's SigLIP initialisation (trainer/src/loss/siglip.rs), used when the config has none.
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0


def param_groups(model, weight_decay):
    """The two AdamW groups of open_clip_train/main.py."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    include = lambda n, p: not exclude(n, p)  # noqa: E731
    named_parameters = list(model.named_parameters())
    gain_or_bias_params = [p for n, p in named_parameters if exclude(n, p) and p.requires_grad]
    rest_params = [p for n, p in named_parameters if include(n, p) and p.requires_grad]
    return [
        {"params": gain_or_bias_params, "weight_decay": 0.0},
        {"params": rest_params, "weight_decay": weight_decay},
    ]


def make_optimizer(model, lr, weight_decay):
    """torch.optim.AdamW as open_clip_train builds it, fused where torch allows it."""
    kwargs = dict(lr=lr, betas=(0.9, 0.98), eps=1e-6)
    try:
        return torch.optim.AdamW(param_groups(model, weight_decay), fused=True, **kwargs), True
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(param_groups(model, weight_decay), **kwargs), False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="an OpenCLIP model-config JSON file")
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16", "pure_bf16"])
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--weight-decay", type=float, default=0.2)
    ap.add_argument("--grad-clip-norm", type=float, default=None)
    ap.add_argument("--loss", default="clip", choices=["clip", "siglip"])
    ap.add_argument("--lock-image", action="store_true", help="model.lock_image_tower(), as open_clip_train's --lock-image")
    ap.add_argument("--lock-text", action="store_true", help="model.lock_text_tower(), as open_clip_train's --lock-text")
    ap.add_argument("--grad-checkpointing", action="store_true",
                    help="model.set_grad_checkpointing(), as open_clip_train's --grad-checkpointing")
    a = ap.parse_args()
    if a.batch_size < 1 or a.steps < 1 or a.warmup < 0:
        ap.error("--batch-size and --steps must be >= 1 and --warmup >= 0")

    # As open_clip_train/main.py: TF32 on.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    with open(a.config) as f:
        cfg = json.load(f)
    if a.loss == "siglip" and cfg.get("init_logit_bias") is None:
        cfg["init_logit_scale"] = cfg.get("init_logit_scale") or SIGLIP_INIT_LOGIT_SCALE
        cfg["init_logit_bias"] = SIGLIP_INIT_LOGIT_BIAS
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    coca = "multimodal_cfg" in cfg
    if coca:
        # OpenCLIP's CoCa, as create_model builds it for a coca_*.json.
        from open_clip.coca_model import CoCa
        model = CoCa(**{k: v for k, v in cfg.items() if k != "custom_text"}).to(dev)
    else:
        model = open_clip.model.CLIP(**cfg, output_dict=True).to(dev)
    input_dtype = None
    if a.precision == "pure_bf16":
        model = model.to(torch.bfloat16)
        input_dtype = torch.bfloat16
    model.train()
    if a.lock_image:
        model.lock_image_tower()
    if a.lock_text:
        model.lock_text_tower()
    if a.grad_checkpointing:
        model.set_grad_checkpointing(True)
    opt, fused = make_optimizer(model, a.lr, a.weight_decay)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.precision == "amp_bf16" \
        else contextlib.nullcontext
    if coca:
        # open_clip_train's defaults: --coca-caption-loss-weight 2, --coca-contrastive-loss-weight 1.
        loss_fn = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, cache_labels=True)
    else:
        loss_fn = SigLipLoss() if a.loss == "siglip" else ClipLoss(cache_labels=True)

    s = cfg["vision_cfg"]["image_size"]
    s = tuple(s) if isinstance(s, (list, tuple)) else (s, s)
    ctx = cfg["text_cfg"].get("context_length", 77)
    vocab = cfg["text_cfg"].get("vocab_size", 49408)
    g = torch.Generator(device="cpu").manual_seed(0)
    images_u8 = torch.randint(0, 256, (a.batch_size, s[0], s[1], 3), dtype=torch.uint8, generator=g).to(dev)
    tokens = torch.randint(1, vocab - 1, (a.batch_size, ctx), dtype=torch.int64, generator=g).to(dev)
    mean = torch.tensor(OPENAI_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=dev).view(1, 3, 1, 1)

    def normalise(u8):
        # ToTensor (HWC uint8 -> CHW float in [0, 1]) then Normalize, on the device.
        x = u8.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        x = x.sub_(mean).div_(std)
        return x if input_dtype is None else x.to(input_dtype)

    def step():
        images = normalise(images_u8)
        opt.zero_grad()
        with autocast():
            model_out = model(images, tokens)
            losses = loss_fn(**model_out, output_dict=True)
            total_loss = sum(losses.values())
        total_loss.backward()
        if a.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip_norm, norm_type=2.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    for _ in range(a.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
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
        "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if cuda else None,
        "device": str(dev),
        "batch_size": a.batch_size,
        "steps": a.steps,
        "loss": a.loss,
        "lr": a.lr,
        "grad_clip_norm": a.grad_clip_norm,
        "fused_adamw": fused,
    }), flush=True)


if __name__ == "__main__":
    main()
