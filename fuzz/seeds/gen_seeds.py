#!/usr/bin/env python3
"""Writes the small seed inputs of the fuzz targets into fuzz/seeds/<target>/.

Run with the reference venv (it has Pillow and pyarrow):

    /work/main/.venv/bin/python fuzz/seeds/gen_seeds.py

The outputs are committed; the script is deterministic apart from library versions.
"""

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def image(fmt, mode="RGB", size=(8, 8), **kw):
    img = Image.new(mode, size)
    px = img.load()
    for y in range(size[1]):
        for x in range(size[0]):
            v = (x * 31 + y * 17) % 256
            if mode in ("RGB", "YCbCr"):
                px[x, y] = (v, 255 - v, (v * 3) % 256)
            elif mode == "RGBA":
                px[x, y] = (v, 255 - v, 7, (v * 5) % 256)
            elif mode == "CMYK":
                px[x, y] = (v, 0, 255 - v, 10)
            elif mode == "P":
                px[x, y] = v % 4
            else:
                px[x, y] = v if mode != "I;16" else v * 257
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


JPG = image("JPEG", quality=50)
PNG = image("PNG")
WEBP = image("WEBP", lossless=True)


# --- tar_reader -------------------------------------------------------------------------
def tar_bytes(members, fmt=tarfile.USTAR_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            if data is None:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    # Drop the record padding after the two end-of-archive blocks.
    end = len(raw.rstrip(b"\0"))
    end = (end + 511) // 512 * 512 + 1024
    return raw[:end]


out("tar_reader", "pair", tar_bytes([("e0.jpg", JPG), ("e0.txt", b"a photo of a dog"), ("e0.cls", b" 3\n")]))
out(
    "tar_reader",
    "two_samples_json",
    tar_bytes([
        ("d/", None),
        ("d/e1.png", PNG),
        ("d/e1.json", json.dumps({"caption": "a cat"}).encode()),
        ("d/e2.webp", WEBP[:200]),
        ("d/e2.txt", b"caption two"),
        ("d/e2.TXT", b"duplicate"),
        ("__meta__", b"{}"),
    ]),
)
out(
    "tar_reader",
    "pax_long_names",
    tar_bytes([("dir/" + "x" * 120 + ".jpg", b"\xff\xd8\xff"), ("dir/" + "x" * 120 + ".txt", b"t")], tarfile.PAX_FORMAT),
)
out(
    "tar_reader",
    "gnu_long_names",
    tar_bytes([("g/" + "y" * 110 + ".jpg", b"j"), ("../evil.txt", b"t")], tarfile.GNU_FORMAT),
)
out("tar_reader", "truncated", tar_bytes([("e0.jpg", JPG), ("e0.txt", b"cut")])[:700])

# --- parquet_reader ---------------------------------------------------------------------
def parquet_bytes(table, **kw):
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


rows = pa.table(
    {
        "url": ["http://x/0.jpg", "http://x/1.jpg", "http://x/2.jpg", "http://x/3.jpg"],
        "caption": ["a dog", None, "   ", "a cat"],
        "key": ["000000000", "000000001", "000000002", "000000003"],
        "status": ["success", "success", "failed_to_download", "success"],
        "jpg": [b"\xff\xd8\xff\xe0jpegbytes", b"img", None, JPG[:64]],
        "cls": pa.array([1, None, 2, 3], type=pa.int64()),
    }
)
out("parquet_reader", "img2dataset_plain", parquet_bytes(rows, compression="none", row_group_size=2))
out("parquet_reader", "img2dataset_snappy", parquet_bytes(rows, compression="snappy", use_dictionary=True))
out("parquet_reader", "img2dataset_zstd_v1", parquet_bytes(rows, compression="zstd", data_page_version="1.0"))
minimal = pa.table(
    {
        "jpg": pa.array([b"a", b"b"], type=pa.large_binary()),
        "txt": pa.array([b"cap", b"\xff\xfe"], type=pa.binary()),
        "key": pa.array([7, 8], type=pa.uint32()),
    }
)
out("parquet_reader", "txt_binary_intkey", parquet_bytes(minimal, compression="none", write_statistics=False))
out("parquet_reader", "wrong_schema", parquet_bytes(pa.table({"jpg": ["str"], "caption": ["c"]}), compression="none"))

# --- image_decode (first byte: mode; see fuzz_targets/image_decode.rs) -------------------
out("image_decode", "jpeg_rgb", b"\x00" + JPG)
out("image_decode", "jpeg_scaled", b"\x0c" + image("JPEG", size=(64, 48), quality=30))
out("image_decode", "jpeg_progressive", b"\x08" + image("JPEG", progressive=True, quality=40))
out("image_decode", "jpeg_grey", b"\x00" + image("JPEG", mode="L"))
out("image_decode", "jpeg_cmyk", b"\x00" + image("JPEG", mode="CMYK"))
out("image_decode", "jpeg_limit", b"\x30" + image("JPEG", size=(16, 16)))
out("image_decode", "png_rgb", b"\x01" + PNG)
out("image_decode", "png_palette", b"\x01" + image("PNG", mode="P"))
out("image_decode", "png_rgba", b"\x01" + image("PNG", mode="RGBA"))
out("image_decode", "png_16bit", b"\x01" + image("PNG", mode="I;16"))
out("image_decode", "webp_lossless", b"\x02" + WEBP)
out("image_decode", "webp_lossy", b"\x02" + image("WEBP", quality=30))
out("image_decode", "webp_alpha", b"\x02" + image("WEBP", mode="RGBA", quality=30))

# --- tokenizers ---------------------------------------------------------------------------
texts = {
    "plain": "a photo of a dog on the beach",
    "html": "Tom &amp; Jerry&#39;s &lt;b&gt;cat&lt;/b&gt; &copy &EACUTE; &#x1F600; &#150;",
    "unicode": "Café naïve ﬁsh ǅ İstanbul ſ 東京 😀 \u0345 \u00a0\u2028 Ａｂｃ",
    "specials": "<start_of_text> hi <|endoftext|> <end_of_text>'s 'll 'RE",
    "long": " ".join(["word%d" % i for i in range(120)]),
    "mojibake": "cafÃ© â€™quotedâ€\x9d \ufeff",
}
for name, text in texts.items():
    out("tokenizers", name, text.encode())

# --- brace_expansion (NUL separates spec and weights) --------------------------------------
specs = {
    "range": b"data/shard-{000000..000009}.tar",
    "nested": b"python{2.{5..7},3.{2,3}}{a..g..2}",
    "sources": b"s3://bucket/a-{00..03}.tar::https://host:8080/b-{1..3}.tar::gs://g/c.tar\x002::0.5::1e3",
    "escapes": b"{1\\{2,3}\\,{x,,y}{}{a}{4..1}{2..-1}{07..10..-2}",
    "az_file": b"az://container@acct/p/{a,b}.tar::file:///data/{0..2}.tar::pipe:curl x",
}
for name, data in specs.items():
    out("brace_expansion", name, data)

# --- csv_dataset (first byte: separator, 0 tab, 1 comma) ----------------------------------
out("csv_dataset", "tsv", b"\x00filepath\ttitle\r\na.jpg\ta dog\n\n\"b\tc.jpg\"\t\"say \"\"hi\"\"\nto all\"\nd.png\t\n")
out("csv_dataset", "csv", b"\x01title,filepath,extra\n\"x, y\",/abs/p.jpg,1\n,,\n\"unterminated,q.jpg\n")
