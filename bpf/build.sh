#!/bin/sh
# Builds bpf/fastpath.bpf.c into build/fastpath.bpf.o (npm run build). Fails loudly when clang is missing.
set -eu
cd "$(dirname "$0")/.."
command -v clang >/dev/null 2>&1 || { echo "bpf/build.sh: clang is missing: apt-get install clang llvm libbpf-dev (the tc-bpf data path needs it)" >&2; exit 1; }
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "bpf/build.sh: /usr/include/bpf/bpf_helpers.h is missing: apt-get install libbpf-dev" >&2; exit 1; }
mkdir -p build
arch=$(uname -m)
clang -target bpf -O2 -g -Wall -Werror -I"/usr/include/${arch}-linux-gnu" -c bpf/fastpath.bpf.c -o build/fastpath.bpf.o
