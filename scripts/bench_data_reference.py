"""The OpenCLIP reference of `clipfleet bench data`: OpenCLIP's own training data pipeline.

It builds the loader exactly as `open_clip_train` does for `--train-data URLS --dataset-resampled`
(or without resampling): `open_clip_train.data.get_wds_dataset`, i.e. webdataset 1.0.2 shard
lists, tar reading, a 5000-sample shuffle buffer, Pillow decoding (`decode("pilrgb")`), OpenCLIP's
training transform `open_clip.image_transform(224, is_train=True)` (RandomResizedCrop(224,
scale=(0.9, 1.0), bicubic), RGB, ToTensor, Normalize with OpenAI's mean and std), OpenCLIP's BPE
tokenizer, `wds.batched` and a `WebLoader` (torch DataLoader) with `--workers` processes.

Timing starts when every worker has delivered its first batch (the first `workers` batches;
start-up, imports and the fill of the shuffle buffer are excluded) and stops at the last timed
batch. Two adaptations, both outside the timed steady state: the shuffle buffer is filled before
its first sample (OpenCLIP grows it from 1000 to 5000 samples while yielding, reading two samples
per sample out meanwhile), and webdataset 1.0's end-of-shard marker, which open_clip_train 3.3.0
predates, is turned off. Prints one JSON object on stdout.

Run: .venv/bin/python scripts/bench_data_reference.py --train-data 'DIR/bench-{000000..000007}.tar' \\
         --workers 2 --batch-size 256 --batches 16 --dataset-resampled
"""

import argparse
import functools
import json
import math
import sys
import time
import types


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-data", required=True, help="shard URLs, brace patterns joined with '::'")
    p.add_argument("--workers", type=int, required=True, help="DataLoader worker processes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=16, help="timed batches, after one per worker")
    p.add_argument("--dataset-resampled", action="store_true", help="draw shards with replacement")
    p.add_argument("--train-num-samples", type=int, default=None, help="samples per epoch (default: enough)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import PIL
    import torch
    import torchvision
    import webdataset
    import open_clip

    # open_clip_train.data imports pandas for its CSV datasets only; without pandas installed, a
    # placeholder stands in while it is imported (and is removed again: torch probes for pandas).
    placeholder = None
    try:
        import pandas  # noqa: F401
    except ImportError:
        placeholder = sys.modules["pandas"] = types.ModuleType("pandas")
    try:
        import open_clip_train.data
    finally:
        if placeholder is not None:
            del sys.modules["pandas"]
    from open_clip_train.data import get_wds_dataset
    from webdataset.tariterators import tar_file_expander

    # open_clip_train 3.3.0's group_by_keys_nothrow predates the empty end-of-shard marker that
    # webdataset 1.0 yields (it fails on it with KeyError 'fname'): ask for none, as before 1.0.
    open_clip_train.data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)
    # OpenCLIP's sample shuffle buffer holds 5000 samples but starts yielding at 1000; until it is
    # full it reads two samples per sample out, i.e. for the first 4000 samples of each worker,
    # which is start-up. Filling it before the first sample makes the timed batches its steady
    # state (one read per sample out), the state of a real run; the size is unchanged.
    open_clip_train.data._SAMPLE_SHUFFLE_INITIAL = open_clip_train.data._SAMPLE_SHUFFLE_SIZE

    workers = max(1, args.workers)
    warmup = workers
    wanted = warmup + args.batches
    num_samples = args.train_num_samples or wanted * args.batch_size
    ns = argparse.Namespace(
        train_data=args.train_data,
        val_data=None,
        dataset_resampled=args.dataset_resampled,
        train_num_samples=num_samples,
        train_data_upsampling_factors=None,
        seed=args.seed,
        batch_size=args.batch_size,
        world_size=1,
        workers=workers,
    )
    preprocess = open_clip.image_transform(224, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    loader = get_wds_dataset(ns, preprocess, is_train=True, epoch=0, tokenizer=tokenizer).dataloader

    arrivals, images = [], 0
    while len(arrivals) < wanted:
        before = len(arrivals)
        for image_batch, text_batch in loader:
            assert image_batch.shape[1:] == (3, 224, 224) and text_batch.shape[1] == 77
            arrivals.append(time.perf_counter())
            if len(arrivals) > warmup:
                images += image_batch.shape[0]
            if len(arrivals) == wanted:
                break
        if len(arrivals) == before:
            raise SystemExit("the reference loader yielded no batch: too few samples or shards")
    seconds = arrivals[-1] - arrivals[warmup - 1]
    print(
        json.dumps(
            {
                "reference": (
                    f"open_clip {open_clip.__version__} get_wds_dataset / webdataset {webdataset.__version__} / "
                    f"Pillow {PIL.__version__} / torchvision {torchvision.__version__} / torch {torch.__version__}"
                ),
                "workers": workers,
                "warmup_batches": warmup,
                "timed_batches": len(arrivals) - warmup,
                "images": images,
                "seconds": seconds,
                "images_per_second": images / seconds if seconds > 0 else math.nan,
            }
        )
    )


if __name__ == "__main__":
    main()
