#!/usr/bin/env bash
# On the CPU machine, after `cargo build --release`: copies the shared libraries that the release
# binaries load from the system and a GPU machine may lack into .gpu-libs/ (git-excluded), to be
# carried beside the binaries. scripts/gpu-check.sh puts .gpu-libs/ on LD_LIBRARY_PATH.
#
#   .gpu-libs/           the OpenMPI family (libmpi.so.40, libopen-rte, libopen-pal, libhwloc,
#                        libevent, libpmix): clipfleet links MPI, a GPU machine rarely has it;
#   .gpu-libs/fallback/  the other non-glibc system libraries (libz, libudev, ...): used only for
#                        a library the GPU machine's loader cannot find, so they never shadow its own.
#
# libtorch, CUDA and NCCL are not copied: they come from the GPU machine's python3 (its torch and
# nvidia-nccl wheels). Prints the folder's size; carry it with the binaries (64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${DEST:-.gpu-libs}
BINS=(target/release/clipfleet-core target/release/clipfleet-dist-check)
for b in "${BINS[@]}"; do
  [ -x "$b" ] || { echo "error: $b is missing: build with cargo build --release first" >&2; exit 1; }
done
if [ -d .git ]; then
  grep -qxF '.gpu-libs/' .git/info/exclude 2>/dev/null || echo '.gpu-libs/' >>.git/info/exclude
fi
rm -rf "$DEST"
mkdir -p "$DEST/fallback"
missing=$(ldd "${BINS[@]}" 2>&1 | grep -i 'not found' || true)
if [ -n "$missing" ]; then
  echo "error: the binaries do not load on this machine either:" >&2
  echo "$missing" >&2
  exit 1
fi
# "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)": name and resolved path.
ldd "${BINS[@]}" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | sort -u | while read -r name path; do
  case "$name" in
    # glibc, the compiler runtimes and the kernel's: every machine that runs torch has its own.
    libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | libutil.so* | libresolv.so* | ld-linux* | \
      libgcc_s.so* | libstdc++.so* | libgomp.so* | linux-vdso*) continue ;;
  esac
  case "$path" in
    # torch's own libraries and the CUDA wheels: taken from the GPU machine's python3.
    */torch/lib/* | */nvidia/* | */site-packages/*) continue ;;
  esac
  if [[ "$name" =~ mpi|open-rte|open-pal|hwloc|event|pmix ]]; then
    cp -L "$path" "$DEST/$name"
  else
    cp -L "$path" "$DEST/fallback/$name"
  fi
done
ls "$DEST" "$DEST/fallback"
du -sh "$DEST"
