#!/usr/bin/env bash
# Man pages and shell completions for the package, generated from the CLI definition on the
# build host (examples/dist_assets.rs; they do not depend on the target architecture).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/dist/assets}
rm -rf "$out"
timeout 1800 cargo run --locked --quiet --example dist_assets -- "$out" >/dev/null
gzip -9n "$out"/man/*.1
ls "$out"/man "$out"/completions
