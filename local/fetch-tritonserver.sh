#!/usr/bin/env bash
# Unpacks NVIDIA's tritonserver 2.51.0 (the release in nvcr.io/nvidia/tritonserver:24.10-py3)
# from the nvidia-pytriton wheel on PyPI, without installing pytriton itself (it would pin numpy
# and tritonclient). Layout: bin/ lib/ backends/python/ caches/local/, as the server expects.
# See ../shared/notes/triton-local.md for the measured details.
set -euo pipefail
dest=${1:?usage: fetch-tritonserver.sh DEST PYTHON}
py=${2:?usage: fetch-tritonserver.sh DEST PYTHON}
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --no-deps --only-binary=:all: nvidia-pytriton==0.7.0 -d "$tmp"
"$py" -m zipfile -e "$tmp"/nvidia_pytriton-*.whl "$tmp/x"
src="$tmp/x/pytriton/tritonserver"
[ -f "$src/python_backend_stubs/$pyver/triton_python_backend_stub" ] ||
  { echo "no python-backend stub for Python $pyver in nvidia-pytriton 0.7.0" >&2; exit 1; }

out="$dest.partial"
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/backends/python" "$out/caches/local"
cp "$src/bin/tritonserver" "$out/bin/"
cp "$tmp"/x/nvidia_pytriton.libs/* "$out/lib/"
rm -f "$out"/lib/libpython3*            # the stub links the models' own libpython instead
cp "$src/backends/python/libtriton_python.so" "$src/backends/python/triton_python_backend_utils.py" \
   "$src/python_backend_stubs/$pyver/triton_python_backend_stub" "$out/backends/python/"
cp "$src/caches/local/libtritoncache_local.so" "$out/caches/local/"
chmod +x "$out/bin/tritonserver" "$out/backends/python/triton_python_backend_stub"
rm -rf "$dest"
mv "$out" "$dest"
echo "tritonserver unpacked in $dest (python backend stub for Python $pyver)"
