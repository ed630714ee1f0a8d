# Shared by demo.sh and test.sh: configure and build with Ninja and ccache.
# Usage: cityos_build <build-dir> <build-type> [targets...]
cityos_build() {
  local dir=$1 type=$2
  shift 2
  # Let ccache hit across clones and directories (CI builds a fresh clone).
  export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=true
  export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
  if [ ! -f "$dir/build.ninja" ]; then
    mkdir -p "$dir"
    cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE="$type" \
      -DCITYOS_BUILD_TESTS="${CITYOS_BUILD_TESTS:-ON}" > "$dir/configure.log" 2>&1 \
      || { cat "$dir/configure.log"; return 1; }
  fi
  local jobs
  jobs=$(nproc)
  cmake --build "$dir" --parallel "$jobs" ${1:+--target "$@"}
}
