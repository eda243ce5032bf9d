#!/bin/sh
# llama.cpp's llama-bench and llama-quantize for bench/generation.py (`make bench`), built for this CPU
# from the llama.cpp that the llama-cpp-python source package vendors, into build/llamacpp/bin (once).
# A binary on PATH may be built for another CPU (a SIGILL on quantized files), so it is not relied on;
# LLAMACPP_USE_PATH=1 skips the build when both are on PATH. Without cmake the llama.cpp rows are skipped.
set -e
PY=${PY:-python}
VERSION=${LLAMACPP_VERSION:-0.3.36}
OUT=build/llamacpp
if [ "${LLAMACPP_USE_PATH:-0}" = 1 ] && command -v llama-bench >/dev/null 2>&1 \
    && command -v llama-quantize >/dev/null 2>&1; then exit 0; fi
if [ -x "$OUT/bin/llama-bench" ] && [ -x "$OUT/bin/llama-quantize" ]; then exit 0; fi
if ! command -v cmake >/dev/null 2>&1; then
    echo "bench: no cmake to build llama.cpp's llama-bench; the llama.cpp rows will be skipped" >&2
    exit 0
fi
mkdir -p "$OUT/src"
"$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$OUT/src"
tar xzf "$OUT/src/llama_cpp_python-$VERSION.tar.gz" -C "$OUT/src"
# Not GGML_NATIVE: -march=native turns on AMX where the CPU lists it, and a VM that lists AMX without
# granting its tile state kills llama.cpp with SIGILL on quantized files (seen here). The ISA options
# are taken from the CPU's own flags instead, AMX left out.
ISA=""
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
            avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    case " $FLAGS " in *" ${pair%%:*} "*) ISA="$ISA -DGGML_${pair#*:}=ON" ;; esac
done
cmake -S "$OUT/src/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF $ISA -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TOOLS=ON >/dev/null
cmake --build "$OUT/build" --target llama-bench llama-quantize -j "$(nproc)" >/dev/null
mkdir -p "$OUT/bin"
cp "$OUT/build/bin/llama-bench" "$OUT/build/bin/llama-quantize" "$OUT/bin/"
