# Source this to build with cargo directly: it puts the project venv's python (with torch 2.11.0)
# on PATH so that torch-sys finds libtorch (DESIGN §2).
_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export PATH="$_root/.venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=0
unset _root
