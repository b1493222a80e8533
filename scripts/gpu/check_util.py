"""Helpers of scripts/gpu-check.sh: the prerequisite probe, model configs and the parsing of
every part's output. The same functions run in the GPU mode and in `--cpu-dry-run`.

Standard library only, except `probe`, which imports torch (and open_clip when present).
Each subcommand prints what the summary should say and exits 0 (PASS) or 1 (FAIL).

    check_util.py probe gpu|cpu                   KEY=VALUE lines for the shell
    check_util.py model-config NAME               clipfleet's preset NAME as OpenCLIP config JSON
    check_util.py devices LINE GRAD_TOL LOSS_TOL  a `clipfleet-dist-check devices` line within tolerance?
    check_util.py roundtrip TRAIN.json EVAL.json  training's final evaluation against eval-after-load
    check_util.py bench CLIPFLEET.json REF.json   one throughput row, clipfleet beside OpenCLIP
    check_util.py openclip FILE                   bench_openclip.py's lines: all ran?
    check_util.py train-log LOG MAX_WAIT          the last `train` log line; data wait below MAX_WAIT?
    check_util.py merge-shards DIR                DIR/0/, DIR/1/, ... into one folder of shards
    check_util.py tail LOG N                      a log's last N lines, JSON lines shortened
"""
import json
import math
import os
import re
import sys


def probe(mode):
    """What gpu-check.sh needs to know about this machine's python, as KEY=VALUE lines."""
    out = {}
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - report any import failure by name
        print(f"error=torch is not importable with {sys.executable}: {e!r}")
        return 1
    out["torch_version"] = torch.__version__
    out["torch_lib"] = os.path.join(os.path.dirname(torch.__file__), "lib")
    out["cuda_available"] = int(torch.cuda.is_available())
    if mode == "gpu" and torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0).replace(" ", "_")
        out["cuda_version"] = torch.version.cuda
    try:
        import nvidia.nccl
        lib = os.path.join(list(nvidia.nccl.__path__)[0], "lib")
        if os.path.isfile(os.path.join(lib, "libnccl.so.2")):
            out["nccl_lib"] = lib
    except Exception:  # noqa: BLE001 - absent is reported by the shell
        pass
    try:
        import open_clip
        out["open_clip_version"] = open_clip.__version__
        out["open_clip_dir"] = os.path.dirname(open_clip.__file__)
    except Exception as e:  # noqa: BLE001
        out["open_clip_error"] = repr(e).replace("\n", " ")
    for k, v in out.items():
        print(f"{k}={v}")
    return 0


# clipfleet's presets (trainer/src/model/config.rs), as `serde_json::to_string(&ClipConfig)` writes them.
def _vit(image_size, layers, width, patch_size):
    return {"image_size": image_size, "layers": layers, "width": width, "head_width": 64, "mlp_ratio": 4.0,
            "patch_size": patch_size, "final_ln_after_pool": False, "no_ln_pre": False}


def _text(width, heads, layers=12, vocab_size=49408, context_length=77):
    return {"context_length": context_length, "vocab_size": vocab_size, "width": width, "heads": heads,
            "layers": layers, "mlp_ratio": 4.0, "final_ln_after_pool": False, "no_causal_mask": False}


def _resnet(image_size, layers, width):
    return {"image_size": image_size, "layers": layers, "width": width, "head_width": 64, "mlp_ratio": 4.0,
            "patch_size": None, "final_ln_after_pool": False, "no_ln_pre": False}


def _coca(embed_dim, vision, text, pooler_heads, decoder_pool_heads, queries=None):
    vision = dict(vision, attentional_pool=True, attn_pooler_heads=pooler_heads, output_tokens=True)
    if queries is not None:
        vision["attn_pooler_queries"] = queries
    text = dict(text, embed_cls=True, output_tokens=True)
    multimodal = {"context_length": text["context_length"], "vocab_size": text["vocab_size"], "width": text["width"],
                  "heads": text["heads"], "layers": text["layers"], "attn_pooler_heads": decoder_pool_heads}
    return {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text, "multimodal_cfg": multimodal,
            "custom_text": True}


PRESETS = {
    "tiny": {"embed_dim": 128, "vision_cfg": _vit(64, 3, 128, 8), "text_cfg": _text(128, 2, 3, 512, 32)},
    "small": {"embed_dim": 256, "vision_cfg": _vit(64, 6, 256, 8), "text_cfg": _text(256, 4, 6, 512, 32)},
    "ViT-B-32": {"embed_dim": 512, "vision_cfg": _vit(224, 12, 768, 32), "text_cfg": _text(512, 8)},
    "ViT-B-16": {"embed_dim": 512, "vision_cfg": _vit(224, 12, 768, 16), "text_cfg": _text(512, 8)},
    "ViT-L-14": {"embed_dim": 768, "vision_cfg": _vit(224, 24, 1024, 14), "text_cfg": _text(768, 12)},
    "tiny-rn": {"embed_dim": 128, "vision_cfg": _resnet(64, [1, 1, 1, 1], 16), "text_cfg": _text(128, 2, 3, 512, 32)},
    "RN50": {"embed_dim": 1024, "vision_cfg": _resnet(224, [3, 4, 6, 3], 64), "text_cfg": _text(512, 8)},
    "tiny-coca": _coca(128, _vit(64, 3, 128, 8), _text(128, 2, 3, 512, 32), 2, 2, queries=17),
    "coca_ViT-B-32": _coca(512, _vit(224, 12, 768, 32), _text(512, 8, context_length=76), 8, 8),
}


def model_config(name):
    if name not in PRESETS:
        print(f"unknown preset {name!r}: one of {', '.join(PRESETS)}", file=sys.stderr)
        return 1
    print(json.dumps(PRESETS[name]))
    return 0


def _num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def devices(line, grad_tol, loss_tol):
    """`Clip b=64 Cuda(0) fp32 vs CPU fp32: max relative gradient error 1.2e-06, loss relative error 3.4e-08`."""
    g = re.search(r"max relative gradient error ([^,\s]+)", line)
    l_ = re.search(r"loss relative error ([^,\s]+)", line)
    g, l_ = _num(g and g.group(1)), _num(l_ and l_.group(1))
    gt, lt = float(grad_tol), float(loss_tol)
    if g is None or l_ is None:
        print(f"no errors in the output: {line.strip()[-300:]!r}")
        return 1
    ok = math.isfinite(g) and math.isfinite(l_) and g <= gt and l_ <= lt
    print(f"gradients {g:.2e} (<= {gt:g}), loss {l_:.2e} (<= {lt:g}): {line.strip()}")
    return 0 if ok else 1


def _load(path):
    with open(path) as f:
        text = f.read().strip()
    if not text:
        raise ValueError(f"{path} is empty")
    # A file may hold log lines before the JSON object: take the last line that parses.
    for candidate in [text] + text.splitlines()[::-1]:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise ValueError(f"{path} holds no JSON object")


def roundtrip(train_path, eval_path):
    """Training's final evaluation (in memory) against `clipfleet eval` of the checkpoint it wrote.

    Both sides run in fp32 without TF32 (training: precision fp32, tf32 = false; the evaluation
    after loading runs on the CPU), so they differ only by the kernels' summation order (CUDA
    against CPU in the GPU run, nothing in the dry run): the validation loss must agree within
    1e-4 relative, and each recall or accuracy within 2 samples of the N evaluated (a near-tie
    may rank differently under another summation order). A checkpoint that lost or scrambled
    the weights moves the loss by far more.
    """
    a, b = _load(train_path), _load(eval_path)
    n = a.get("num_samples") or b.get("num_samples") or 0
    problems = []
    if a.get("step") is not None and b.get("step") is not None and a["step"] != b["step"]:
        problems.append(f"step {a['step']} vs {b['step']}")
    la, lb = a.get("val_loss"), b.get("val_loss")
    if la is None or lb is None or not abs(la - lb) <= 1e-4 * max(abs(la), 1e-12):
        problems.append(f"val_loss {la} vs {lb} (tolerance 1e-4 relative)")
    tol = 2.0 / n + 1e-9 if n else 1e-9
    for k in ("image_to_text_r1", "text_to_image_r1", "image_to_text_r5", "text_to_image_r5",
              "zero_shot_top1", "zero_shot_top5"):
        x, y = a.get(k), b.get(k)
        if x is None and y is None:
            continue
        if x is None or y is None or abs(x - y) > tol:
            problems.append(f"{k} {x} vs {y} (tolerance 2/{n})")
    shown = {k: a.get(k) for k in ("step", "val_loss", "zero_shot_top1", "image_to_text_r1") if k in a}
    if problems:
        print("training's evaluation and eval-after-load differ: " + "; ".join(problems))
        return 1
    print(f"training's evaluation = eval after load (val_loss {la:.6f} vs {lb:.6f}, N={n}): {shown}")
    return 0


def _gib(b):
    return f"{b / 2**30:.1f} GiB" if isinstance(b, (int, float)) and b else "n/a"


def bench(clipfleet_path, ref_path):
    try:
        r = _load(clipfleet_path)
    except (OSError, ValueError) as e:
        print(f"clipfleet bench train printed no report: {e}")
        return 1
    try:
        ref = _load(ref_path)
    except (OSError, ValueError) as e:
        ref = {"error": str(e)}
    sps, rsps = r.get("samples_per_second"), ref.get("samples_per_second")
    mfu = r.get("mfu")
    mfu = f", MFU {100 * mfu:.1f}%" if isinstance(mfu, (int, float)) else ""
    dev = r.get("device") if not r.get("device_name") else f"{r.get('device')} ({r['device_name']})"
    line = (f"{r.get('model')} bs={r.get('batch_size')} {r.get('precision')} {dev}: "
            f"clipfleet {sps:.1f} samples/s ({r.get('ms_per_step', float('nan')):.1f} ms/step{mfu}, "
            f"peak {_gib(r.get('peak_memory_bytes'))})")
    if not isinstance(rsps, (int, float)):
        print(line + f" | open_clip: no figure ({ref.get('error', 'no samples_per_second')})")
        return 1
    print(line + f" | open_clip {rsps:.1f} samples/s ({ref.get('ms_per_step', float('nan')):.1f} ms/step, "
          f"peak {_gib(ref.get('peak_memory_bytes'))}, {ref.get('reference', '')}) | "
          f"clipfleet / open_clip = {sps / rsps:.2f}x")
    return 0


def openclip(path):
    with open(path) as f:
        lines = [x.strip() for x in f if x.startswith("openclip ")]
    ok = [x for x in lines if "samples/s" in x]
    bad = [x for x in lines if "samples/s" not in x]
    if not ok or bad:
        print("; ".join(bad or ["no `openclip ... samples/s` line"])[:400])
        return 1
    print(" | ".join(ok))
    return 0


def train_log(path, max_wait):
    """The last `train` line of a JSON log (tracing's `fields`), and its data-wait fraction."""
    last = None
    with open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            fields = rec.get("fields", rec) if isinstance(rec, dict) else {}
            if isinstance(fields, dict) and fields.get("message") == "train":
                last = fields
    if last is None:
        print("no `train` log line")
        return 1
    shown = {k: last[k] for k in ("step", "loss", "samples_per_second", "data_wait_fraction") if k in last}
    w = _num(last.get("data_wait_fraction"))
    if w is None:
        print(f"no data_wait_fraction in the last train line: {shown}")
        return 1
    limit = float(max_wait)
    print(f"data wait fraction {w:.3f} (< {limit:g}) at {shown}")
    return 0 if w < limit else 1


def tail(path, n):
    """The last N non-empty lines of a log, JSON log lines shortened to level, message and fields."""
    try:
        with open(path, errors="replace") as f:
            lines = [x.strip() for x in f if x.strip()]
    except OSError as e:
        print(f"(no log: {e.strerror})")
        return 0
    out = []
    for line in lines[-int(n):]:
        try:
            rec = json.loads(line)
            fields = dict(rec.get("fields", {}))
            msg = fields.pop("message", "")
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            line = f"{rec.get('level', '')} {msg} {extra}".strip()
        except (ValueError, AttributeError):
            pass
        out.append(line)
    print(" | ".join(out))
    return 0


def merge_shards(folder):
    """Moves the shards of FOLDER/0/, FOLDER/1/, ... (one `shards make` each) into FOLDER as
    shard-000000.tar, shard-000001.tar, ... and writes their sizes.json; prints the count."""
    sizes = {}
    subs = sorted((d for d in os.listdir(folder) if d.isdigit()), key=int)
    for sub in subs:
        with open(os.path.join(folder, sub, "sizes.json")) as f:
            part = json.load(f)
        for name in sorted(part):
            new = f"shard-{len(sizes):06d}{os.path.splitext(name)[1]}"
            os.rename(os.path.join(folder, sub, name), os.path.join(folder, new))
            sizes[new] = part[name]
    with open(os.path.join(folder, "sizes.json"), "w") as f:
        json.dump(sizes, f, indent=2)
    print(f"{len(sizes)} {sum(sizes.values())}")
    return 0 if sizes else 1


def main(argv):
    cmds = {
        "probe": (probe, 1), "model-config": (model_config, 1), "devices": (devices, 3),
        "roundtrip": (roundtrip, 2), "bench": (bench, 2), "openclip": (openclip, 1),
        "train-log": (train_log, 2), "merge-shards": (merge_shards, 1), "tail": (tail, 2),
    }
    if len(argv) < 2 or argv[1] not in cmds or len(argv) != cmds[argv[1]][1] + 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return cmds[argv[1]][0](*argv[2:])
    except Exception as e:  # noqa: BLE001 - one line for the summary, not a traceback
        print(f"{argv[1]}: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
