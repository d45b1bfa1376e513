#!/usr/bin/env bash
# The release: one archive per plugin and platform (the plugin, tunneld, its completer,
# LICENSE), their SHA256SUMS, and the krew manifests that point at them, validated.
#   packaging/dist.sh [OUT_DIR]          (`make dist`; OUT_DIR defaults to dist/)
# TARGETS: Rust target triples to build, separated by spaces (default: every platform:
#   x86_64-unknown-linux-gnu aarch64-unknown-linux-musl x86_64-apple-darwin
#   aarch64-apple-darwin x86_64-pc-windows-gnu). Linux builds are static (no libc needed on
#   the user's machine); macOS builds link with Zig (cargo-zigbuild) against
#   packaging/macos/frameworks; Windows builds with MinGW. What a target needs is installed
#   here first (docs/releasing.md).
# PROFILE: release (default), or debug for a quicker check of every platform's archive.
# DIST_URL: where the archives will be downloaded from, for the manifests' uri (default:
#   this version's GitHub release).
# VALIDATE_KREW_MANIFEST: the validate-krew-manifest binary (default: built by
#   tests/cluster/cluster.sh krew-bin-dir).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
out=${1:-$repo/dist}
targets=${TARGETS:-x86_64-unknown-linux-gnu aarch64-unknown-linux-musl x86_64-apple-darwin aarch64-apple-darwin x86_64-pc-windows-gnu}
profile=${PROFILE:-release}
url=${DIST_URL:-https://github.com/kubedev/kubedev/releases/download/v$version}
# plugin name (krew) => its binary
declare -A binaries=(
    [intercept]=kubectl-intercept [ingest]=kubectl-ingest
    [replace-container]=kubectl-replace_container
)
packages=(-p kubectl-intercept -p kubectl-ingest -p kubectl-replace -p tunneld)

# platform TARGET: krew's "os arch" for a Rust target triple.
platform() {
    local os arch
    case $1 in
        *-linux-*) os=linux ;;
        *-apple-darwin) os=darwin ;;
        *-windows-gnu) os=windows ;;
        *) echo "dist.sh: no krew platform for target $1" >&2; return 1 ;;
    esac
    case ${1%%-*} in
        x86_64) arch=amd64 ;;
        aarch64) arch=arm64 ;;
        *) echo "dist.sh: no krew architecture for target $1" >&2; return 1 ;;
    esac
    echo "$os $arch"
}

# reproducible_tar_gz DIR OUT: DIR's files, sorted, owner 0 and mtime 0, gzip without a name.
reproducible_tar_gz() {
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf - . | gzip -n -9 > "$2"
}

# toolchain TARGET: installs what building for TARGET needs, if missing.
toolchain() {
    rustup target list --installed | grep -qx "$1" || rustup target add "$1" >&2
    case $1 in
        x86_64-unknown-linux-gnu) ;;
        *-windows-gnu)
            command -v x86_64-w64-mingw32-gcc >/dev/null || { apt-get update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                    gcc-mingw-w64-x86-64 >/dev/null; } ;;
        *)
            python3 -c 'import ziglang' 2>/dev/null || pip install --quiet "ziglang==$ZIG_VERSION" >&2
            command -v cargo-zigbuild >/dev/null ||
                cargo install --quiet --locked cargo-zigbuild --version "$ZIGBUILD_VERSION" >&2 ;;
    esac
}
ZIG_VERSION=0.17.0
ZIGBUILD_VERSION=0.24.1

# build TARGET: the plugins and tunneld for TARGET, in target/TARGET/PROFILE.
build() {
    local build=(cargo build) rustflags=""
    case $1 in
        *-linux-gnu) rustflags="-C target-feature=+crt-static" ;;
        *-linux-musl) build=(cargo zigbuild) ;;
        *-apple-darwin)
            build=(cargo zigbuild)
            # Apple's SDK is not needed: the frameworks' symbols are listed in stubs.
            rustflags="-C link-arg=-F$repo/packaging/macos/frameworks" ;;
    esac
    local profile_flag=()
    [ "$profile" = release ] && profile_flag=(--release)
    local variable
    variable=CARGO_TARGET_$(echo "$1" | tr 'a-z-' 'A-Z_')_RUSTFLAGS
    (cd "$repo" && env "$variable=$rustflags" "${build[@]}" --quiet "${profile_flag[@]}" --locked \
        --target "$1" "${packages[@]}")
}

# check_binary TARGET FILE: FILE is an executable for TARGET's system and architecture, read
# from its header: ELF, Mach-O or PE.
check_binary() {
    local header want
    header=$(od -An -tx1 -N20 "$2" | tr -d ' \n')
    case $1 in
        x86_64-*linux*) want='^7f454c46.{28}3e00' ;;
        aarch64-*linux*) want='^7f454c46.{28}b700' ;;
        x86_64-apple-darwin) want='^cffaedfe07000001' ;;
        aarch64-apple-darwin) want='^cffaedfe0c000001' ;;
        x86_64-pc-windows-gnu)
            want='^4d5a'
            local offset
            offset=$(od -An -tu4 -j60 -N4 "$2" | tr -d ' ')
            [ "$(od -An -tx1 -j"$offset" -N6 "$2" | tr -d ' \n')" = 504500006486 ] || {
                echo "dist.sh: $2 is not an x86_64 Windows executable" >&2; return 1; } ;;
    esac
    [[ $header =~ $want ]] || { echo "dist.sh: $2 is not an executable for $1" >&2; return 1; }
}

# reproducible_zip DIR OUT: DIR's files, sorted, dated 1980-01-01, for Windows.
reproducible_zip() {
    python3 - "$1" "$2" <<'ZIP'
import os, sys, zipfile
source, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
    for name in sorted(os.listdir(source)):
        entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        entry.external_attr = 0o755 << 16
        entry.compress_type = zipfile.ZIP_DEFLATED
        with open(os.path.join(source, name), "rb") as f:
            archive.writestr(entry, f.read())
ZIP
}

# stage_unix DIR TARGET_DIR PLUGIN: what a Linux or macOS archive holds.
stage_unix() {
    local binary=${binaries[$3]}
    install -m755 "$2/$binary" "$2/tunneld" "$1/"
    local completer=kubectl_complete-${binary#kubectl-}
    cat > "$1/$completer" <<COMPLETER
#!/bin/sh
# kubectl (1.26 and later) runs this for \`kubectl $3 ...<TAB>\` once it is on PATH.
exec "\$(dirname "\$(readlink -f "\$0")")/$binary" __complete "\$@"
COMPLETER
    chmod 755 "$1/$completer"
    echo "$completer"
}

rm -rf "$out/krew" "$out"/kubectl-*.tar.gz "$out"/kubectl-*.zip "$out/SHA256SUMS" && mkdir -p "$out/krew"
declare -A platforms=()
for target in $targets; do
    read -r os arch < <(platform "$target")
    echo "building $target ($profile)" >&2
    toolchain "$target"
    build "$target"
    built=$repo/target/$target/$profile
    exe=""
    [ "$os" = windows ] && exe=.exe
    for binary in "${binaries[@]}" tunneld; do
        check_binary "$target" "$built/$binary$exe"
    done
    for plugin in "${!binaries[@]}"; do
        stage=$(mktemp -d) && chmod 755 "$stage"
        install -m644 "$repo/LICENSE" "$stage/"
        files=("${binaries[$plugin]}$exe" "tunneld$exe")
        if [ "$os" = windows ]; then
            name=kubectl-$plugin-v$version-$os-$arch.zip
            install -m755 "$built/${binaries[$plugin]}.exe" "$built/tunneld.exe" "$stage/"
            reproducible_zip "$stage" "$out/$name"
        else
            name=kubectl-$plugin-v$version-$os-$arch.tar.gz
            files+=("$(stage_unix "$stage" "$built" "$plugin")")
            reproducible_tar_gz "$stage" "$out/$name"
        fi
        rm -rf "$stage"
        sha=$(sha256sum "$out/$name" | cut -d' ' -f1)
        listed=""
        for file in "${files[@]}" LICENSE; do
            listed+="    - from: $file
      to: .
"
        done
        platforms[$plugin]+="  - selector:
      matchLabels:
        os: $os
        arch: $arch
    uri: $url/$name
    sha256: $sha
    bin: ${binaries[$plugin]}$exe
    files:
$listed"
    done
done
(cd "$out" && shopt -s nullglob && sha256sum -- kubectl-*.tar.gz kubectl-*.zip > SHA256SUMS)

validate=${VALIDATE_KREW_MANIFEST:-}
if [ -z "$validate" ]; then
    validate=$("$repo/tests/cluster/cluster.sh" krew-bin-dir)/validate-krew-manifest
fi
for plugin in "${!binaries[@]}"; do
    manifest=$out/krew/$plugin.yaml
    {
        echo "# Generated by make dist from krew-manifests/$plugin.yaml; do not edit."
        sed -e "s/@TAG@/v$version/" -e "s/@VERSION@/$version/" "$repo/krew-manifests/$plugin.yaml"
        echo "  platforms:"
        printf '%s' "${platforms[$plugin]}"
    } > "$manifest"
    # The install itself is tested against the archives (tests/e2e/tests/krew.rs): validating it
    # here would download the uri.
    if ! report=$("$validate" -manifest "$manifest" -skip-install 2>&1); then
        echo "$report" >&2
        echo "dist.sh: $manifest is not a valid krew manifest" >&2
        exit 1
    fi
done
ls -l "$out" "$out/krew" >&2
