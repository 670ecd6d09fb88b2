#!/usr/bin/env bash
# Release binaries for gateways, with SHA-256 sums: target/dist/alsentry-VERSION-TARGET.tar.gz
# and target/dist/SHA256SUMS. docs/DEPLOYMENT.md section 5 explains the routes.
#
#   deploy/dist/build.sh [TARGET...]     default: x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu
#
# Targets and how each is built:
#   x86_64-unknown-linux-gnu    the rustup toolchain, natively.
#   aarch64-unknown-linux-gnu   the Debian-native cross route: Debian's rustc-web/cargo-web
#                               with the arm64 standard library (libstd-rust-web-dev:arm64,
#                               multiarch) and gcc-aarch64-linux-gnu as C compiler and linker.
#   armv7-unknown-linux-gnueabihf  the same with the armhf library and gcc-arm-linux-gnueabihf.
#   *-unknown-linux-musl*       the rustup toolchain with that target installed (rustup target
#                               add, musl-tools or a musl cross gcc); not available on the
#                               project's machines, which cannot download rustup targets.
#
# Environment: FEATURES (default "--no-default-features": the gateway build, without the
# embedded broker), PROFILE (default release), DIST (default target/dist), INSTALL_DEPS=1 to
# apt-get the cross toolchain first (root; adds the dpkg architecture).
set -euo pipefail
cd "$(dirname "$0")/../.."

FEATURES=${FEATURES---no-default-features}
PROFILE=${PROFILE:-release}
DIST=${DIST:-target/dist}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ $# -gt 0 ] || set -- x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu
mkdir -p "$DIST"

# Debian names for the cross routes: dpkg architecture, GNU triplet of its gcc.
debian_arch() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo "arm64 aarch64-linux-gnu" ;;
    armv7-unknown-linux-gnueabihf) echo "armhf arm-linux-gnueabihf" ;;
    *) return 1 ;;
  esac
}

install_cross_deps() {
  local arch=$1 triplet=$2
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    dpkg --add-architecture "$arch"
  fi
  timeout 600 apt-get update -qq || echo "apt-get update reported errors; installing anyway" >&2
  # The compiler and the target's standard library must be the same Debian version.
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq \
    rustc-web cargo-web "libstd-rust-web-dev:$arch" "gcc-$triplet" "libc6-dev-$arch-cross"
}

build_debian_cross() {
  local target=$1 arch triplet
  read -r arch triplet < <(debian_arch "$target")
  [ "${INSTALL_DEPS:-0}" = 1 ] && install_cross_deps "$arch" "$triplet"
  local rustc=/usr/bin/rustc cargo=/usr/bin/cargo
  if [ ! -d "/usr/lib/rustlib/$target/lib" ] || [ ! -x "$cargo" ]; then
    echo "the Debian cross route needs: dpkg --add-architecture $arch; apt-get install rustc-web cargo-web libstd-rust-web-dev:$arch gcc-$triplet (or INSTALL_DEPS=1)" >&2
    exit 1
  fi
  local env_target=${target//-/_}
  local upper=${env_target^^}
  # Own target dir: Debian's rustc and the rustup one must not share build-script outputs.
  env RUSTC="$rustc" CARGO_TARGET_DIR=target/debian \
    "CARGO_TARGET_${upper}_LINKER=$triplet-gcc" \
    "CC_${env_target}=$triplet-gcc" "AR_${env_target}=$triplet-ar" \
    timeout 3600 "$cargo" build --locked --profile "$PROFILE" --target "$target" $FEATURES --bin alsentry
  echo "target/debian/$target/$PROFILE/alsentry"
}

build_rustup() {
  local target=$1
  if [ "$target" = "$(rustc -vV | sed -n 's/^host: //p')" ]; then
    # The host target without --target: the same build (and binary) as `cargo deb`'s.
    timeout 3600 cargo build --locked --profile "$PROFILE" $FEATURES --bin alsentry
    echo "target/$PROFILE/alsentry"
  else
    timeout 3600 cargo build --locked --profile "$PROFILE" --target "$target" $FEATURES --bin alsentry
    echo "target/$target/$PROFILE/alsentry"
  fi
}

for target in "$@"; do
  echo "==> $target" >&2
  if debian_arch "$target" >/dev/null; then
    bin=$(build_debian_cross "$target" | tail -1)
  else
    bin=$(build_rustup "$target" | tail -1)
  fi
  name="alsentry-$VERSION-$target"
  stage="$DIST/$name"
  rm -rf "$stage" && mkdir -p "$stage"
  install -m 0755 "$bin" "$stage/alsentry"
  install -m 0644 README.md deploy/systemd/alsentry.service config/alsentry.example.toml "$stage/"
  # Reproducible: the same binary gives the same archive and sum.
  tar -C "$DIST" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - "$name" \
    | gzip -9n >"$DIST/$name.tar.gz"
  rm -rf "$stage"
  # The bare binary too, for gateways without tar conveniences.
  install -m 0755 "$bin" "$DIST/$name"
  file "$DIST/$name" >&2 || true
done

(cd "$DIST" && sha256sum alsentry-"$VERSION"-* | grep -v SHA256SUMS > SHA256SUMS && cat SHA256SUMS)
