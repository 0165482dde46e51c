#!/usr/bin/env bash
# build-ollama.sh builds Ollama from the Go module proxy at a pinned version
# and caches the binary, so the end-to-end test can serve our GGUF files with
# the very runner (llama.cpp inside the ollama binary) that users run.
#
#   integration/build-ollama.sh            # prints the path of the binary
#   OLLAMA_VERSION=v0.24.0 OLLAMA_TUNE_CACHE=~/.cache/ollama-tune integration/build-ollama.sh
#
# Why v0.24.0: up to that version Ollama runs phi3 on its in-binary
# llama.cpp runner, which applies GGUF LoRA adapters; v0.34.1+ refuse them.
#
# The module zip strips llama.cpp's vendor/ folder, so three header-only
# libraries come from elsewhere: nlohmann/json and stb from Debian
# (nlohmann-json3-dev, libstb-dev) and miniaudio.h from the
# github.com/gen2brain/malgo module (it ships the same single header).
# A cold build takes about 10 minutes on 2 cores; later runs reuse the cache.
set -euo pipefail

version="${OLLAMA_VERSION:-v0.24.0}"
malgo_version="${MALGO_VERSION:-v0.11.24}"
cache="${OLLAMA_TUNE_CACHE:-$HOME/.cache/ollama-tune}/ollama-$version"
bin="$cache/bin/ollama"

log() { echo "build-ollama: $*" >&2; }

if [[ -x "$bin" ]]; then
	echo "$bin"
	exit 0
fi

need_pkgs=()
[[ -f /usr/include/nlohmann/json.hpp ]] || need_pkgs+=(nlohmann-json3-dev)
[[ -f /usr/include/stb/stb_image.h ]] || need_pkgs+=(libstb-dev)
if ((${#need_pkgs[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		log "missing Debian packages: ${need_pkgs[*]}; install them with: sudo apt-get install -y ${need_pkgs[*]}"
		exit 1
	fi
	log "installing ${need_pkgs[*]}"
	if ! apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2; then
		apt-get update >&2
		apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2
	fi
fi

mkdir -p "$cache/include/miniaudio" "$cache/bin"

# miniaudio.h: the malgo module vendors the single-header library.
if [[ ! -f "$cache/include/miniaudio/miniaudio.h" ]]; then
	malgo_dir=$(cd "$cache" && GOFLAGS=-mod=mod go mod download -json "github.com/gen2brain/malgo@$malgo_version" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	header=$(find "$malgo_dir" -name miniaudio.h | head -n1)
	if [[ -z "$header" ]]; then
		log "miniaudio.h not found in github.com/gen2brain/malgo@$malgo_version ($malgo_dir)"
		exit 1
	fi
	cp "$header" "$cache/include/miniaudio/miniaudio.h"
fi

log "building github.com/ollama/ollama@$version into $cache/bin (about 10 minutes cold on 2 cores)"
start=$(date +%s)
(
	cd "$cache"
	# GOFLAGS is cleared so a -mod=vendor or -tags from the caller's
	# environment cannot leak into the build of another module.
	env GOFLAGS= GOBIN="$cache/bin" CGO_ENABLED=1 \
		CGO_CPPFLAGS="-I$cache/include -I/usr/include/stb ${CGO_CPPFLAGS:-}" \
		go install -ldflags "-s -w -X github.com/ollama/ollama/version.Version=${version#v}" \
		"github.com/ollama/ollama@$version"
)
log "built in $(($(date +%s) - start)) s"
"$bin" --version >&2 || true
echo "$bin"
