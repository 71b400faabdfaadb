#!/usr/bin/env bash
# The Worker's wasm: raw and gzip size, and its largest contributors (twiggy, from crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
wasm=build/worker/index_bg.wasm
[ -f "$wasm" ] || scripts/build-worker >/dev/null
echo "| file | raw bytes | gzip -9 bytes |"
echo "|---|---|---|"
echo "| $wasm | $(stat -c %s "$wasm") | $(gzip -9 -c "$wasm" | wc -c) |"
echo "| build/worker/index.js | $(stat -c %s build/worker/index.js) | $(gzip -9 -c build/worker/index.js | wc -c) |"
command -v twiggy >/dev/null || { echo "size: installing twiggy (crates.io)" >&2; cargo install --quiet --locked twiggy >&2; }
# The name section is stripped from the deployed wasm; twiggy reads an unstripped build of the same code.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wasm-bindgen --target module --out-dir "$tmp" --out-name index target/wasm32-unknown-unknown/release/edge_ratelimit.wasm
echo
echo "Largest contributors (twiggy top, by retained size, of the build before wasm-opt):"
echo '```'
twiggy top -n 20 "$tmp/index_bg.wasm"
echo '```'
