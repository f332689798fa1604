#!/bin/sh
# Builds bpf/fastpath.bpf.c into build/fastpath.bpf.o (npm run build). Without clang or libbpf-dev the object is not
# built and says so: mplb then runs on the tun data path (datapath: tc-bpf refuses to start with FP_NO_OBJECT, auto
# falls back). Under CI (CI=true) a missing tool is an error: the fast path tests must run there.
set -eu
cd "$(dirname "$0")/.."
missing=""
command -v clang >/dev/null 2>&1 || missing="clang"
[ -f /usr/include/bpf/bpf_helpers.h ] || missing="${missing:+$missing, }libbpf-dev (/usr/include/bpf/bpf_helpers.h)"
if [ -n "$missing" ]; then
  echo "bpf/build.sh: the tc-bpf fast path is not built: $missing missing (apt-get install clang llvm libbpf-dev); the tun data path works without it" >&2
  [ "${CI:-}" = true ] && exit 1
  exit 0
fi
mkdir -p build
arch=$(uname -m)
clang -target bpf -O2 -g -Wall -Werror -I"/usr/include/${arch}-linux-gnu" -c bpf/fastpath.bpf.c -o build/fastpath.bpf.o
