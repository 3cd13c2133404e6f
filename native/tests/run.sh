#!/usr/bin/env bash
# C unit test of the codec kernels against reference vectors from the numpy implementation.
#
#   bash native/tests/run.sh [host|aarch64|armv7|all]      (default: all)
#
#   host     every ISA build of this machine's architecture (x86: sse2, avx2, avx512),
#            run natively; test_kernels skips (and says so) builds this CPU cannot run
#   aarch64  aarch64-linux-gnu-gcc, run under qemu-aarch64 (NEON is baseline)
#   armv7    arm-linux-gnueabihf-gcc -march=armv7-a -mfpu=neon -mfloat-abi=hard,
#            run under qemu-arm
#
# Debian/Ubuntu packages: gcc gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user.
# A requested target whose toolchain or emulator is missing is an error, never a skip.
# Environment: PYTHON (default python3; needs numpy), CC (host compiler, default gcc),
# QEMU_AARCH64 / QEMU_ARM (emulators, default qemu-aarch64 / qemu-arm).
# Output goes to native/tests/build/ (gitignored). Exit status 0 iff every target passed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build="$here/build"
PYTHON=${PYTHON:-python3}
HOST_CC=${CC:-gcc}
QEMU_AARCH64=${QEMU_AARCH64:-qemu-aarch64}
QEMU_ARM=${QEMU_ARM:-qemu-arm}

# The flags of CMakeLists.txt (C99 with GNU extensions, ES_C_FLAGS); warnings on top.
CFLAGS=(-std=gnu99 -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -Wall -Wextra)
ARMV7_FLAGS=(-march=armv7-a -mfpu=neon -mfloat-abi=hard)

die() { echo "run.sh: error: $*" >&2; exit 2; }

need() { # need TOOL WHY: fail loudly if TOOL is not on PATH
    command -v "$1" >/dev/null 2>&1 || die "$1 not found ($2)"
}

# --- target descriptions: compiler, extra flags, emulator, kernel variants ------------
# A variant is "table:name:flags..." and mirrors one es_kernel_variant() of CMakeLists.txt.

host_variants() { # the variants CMakeLists.txt builds for this machine's architecture
    case "$(uname -m)" in
    x86_64 | amd64 | i?86)
        echo "es_kernels_baseline:sse2:"
        flag_ok -mavx2 && echo "es_kernels_avx2:avx2:-mavx2"
        local avx512="-mavx512f -mavx512bw -mavx512vl -mavx512dq"
        # shellcheck disable=SC2086
        flag_ok $avx512 && echo "es_kernels_avx512:avx512:$avx512 -mprefer-vector-width=512"
        ;;
    aarch64 | arm64) echo "es_kernels_baseline:neon:" ;;
    arm*) echo "es_kernels_baseline:neon:-mfpu=neon" ;;
    *) echo "es_kernels_baseline:scalar:" ;;
    esac
}

flag_ok() { # like CMake's check_c_compiler_flag
    echo 'int main(void) { return 0; }' | "$HOST_CC" "$@" -x c - -o /dev/null >/dev/null 2>&1
}

# The dispatch.c define that links a variant in (the baseline table is always there).
variant_define() {
    case "$1" in
    es_kernels_avx2) echo -DES_HAVE_AVX2 ;;
    es_kernels_avx512) echo -DES_HAVE_AVX512 ;;
    esac
}

# --- build ----------------------------------------------------------------------------

# build TARGET CC "ARCH FLAGS" "LINK FLAGS" VARIANT...: objects and binary in build/TARGET.
# The compiles are independent, so they run in parallel.
build_target() {
    local target=$1 cc=$2 arch=$3 link=$4
    shift 4
    local out="$build/$target" pids=() objs=() defines=() v table name vflags
    mkdir -p "$out"
    for v in "$@"; do
        IFS=: read -r table name vflags <<<"$v"
        # shellcheck disable=SC2086 # arch and variant flags are word lists
        "$cc" "${CFLAGS[@]}" $arch $vflags -I"$root/native" -DES_TABLE="$table" \
            -DES_NAME="\"$name\"" -c "$root/native/kernels_impl.c" -o "$out/$table.o" &
        pids+=($!)
        objs+=("$out/$table.o")
        defines+=($(variant_define "$table"))
    done
    # shellcheck disable=SC2086
    "$cc" "${CFLAGS[@]}" $arch -I"$root/native" "${defines[@]}" \
        -c "$root/native/dispatch.c" -o "$out/dispatch.o" &
    pids+=($!)
    # shellcheck disable=SC2086
    "$cc" "${CFLAGS[@]}" $arch -I"$root/native" \
        -c "$here/test_kernels.c" -o "$out/test_kernels.o" &
    pids+=($!)
    local p failed=0
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    [ $failed = 0 ] || die "$target: compile failed"
    # shellcheck disable=SC2086
    "$cc" $arch $link "$out/test_kernels.o" "$out/dispatch.o" "${objs[@]}" \
        -o "$out/test_kernels" || die "$target: link failed"
}

# Proves that the kernels of an ARM target compile their NEON path: kernels_impl.c defines
# ES_USE_NEON exactly when __ARM_NEON is set by the compiler flags.
assert_neon_compiled() {
    local target=$1 cc=$2 arch=$3 macros="$build/$1/kernels_impl.macros"
    # shellcheck disable=SC2086
    "$cc" "${CFLAGS[@]}" $arch -I"$root/native" -DES_TABLE=t -DES_NAME='"neon"' -dM -E \
        "$root/native/kernels_impl.c" >"$macros" || die "$target: preprocessing failed"
    grep -qx '#define ES_USE_NEON 1' "$macros" && grep -qx '#define __ARM_NEON 1' "$macros" ||
        die "$target: the NEON path of kernels_impl.c is not compiled (no __ARM_NEON)"
    echo "$target: kernels_impl.c compiled with its NEON path (ES_USE_NEON, __ARM_NEON)"
}

# --- run ------------------------------------------------------------------------------

failures=0

# check_run TARGET "REQUIRED ISA LINE" CMD...: runs the test, shows its output, and checks
# the summary line and, if given, the exact "tested ISA tables:" line.
check_run() {
    local target=$1 want_isas=$2 log="$build/$1/test.log" status=0
    shift 2
    echo "== $target: $*"
    "$@" "$build/vectors.bin" >"$log" 2>&1 || status=$?
    cat "$log"
    local summary
    summary=$(tail -n 1 "$log")
    if [ $status != 0 ] || ! [[ $summary =~ ^[1-9][0-9]*\ passed,\ 0\ failed$ ]]; then
        echo "== $target: FAILED (exit status $status)"
        failures=$((failures + 1))
    elif [ -n "$want_isas" ] && ! grep -qx "tested ISA tables: $want_isas" "$log"; then
        echo "== $target: FAILED (expected 'tested ISA tables: $want_isas')"
        failures=$((failures + 1))
    else
        echo "== $target: ok"
    fi
}

run_host() {
    mapfile -t variants < <(host_variants)
    build_target host "$HOST_CC" "" "" "${variants[@]}"
    check_run host "" "$build/host/test_kernels"
}

run_aarch64() {
    local cc=aarch64-linux-gnu-gcc
    build_target aarch64 "$cc" "" "-static" "es_kernels_baseline:neon:"
    assert_neon_compiled aarch64 "$cc" ""
    check_run aarch64 "neon" "$QEMU_AARCH64" -cpu cortex-a72 "$build/aarch64/test_kernels"
}

run_armv7() {
    local cc=arm-linux-gnueabihf-gcc arch="${ARMV7_FLAGS[*]}"
    build_target armv7 "$cc" "$arch" "-static" "es_kernels_baseline:neon:"
    assert_neon_compiled armv7 "$cc" "$arch"
    # Cortex-A7 (Raspberry Pi 2): a true ARMv7 core, NEON flushes subnormals to zero.
    check_run armv7 "neon" "$QEMU_ARM" -cpu cortex-a7 "$build/armv7/test_kernels"
}

main() {
    local what=${1:-all} targets
    case "$what" in
    host | aarch64 | armv7) targets=("$what") ;;
    all) targets=(host aarch64 armv7) ;;
    *) die "unknown target '$what' (host, aarch64, armv7 or all)" ;;
    esac
    # Every requested toolchain must exist before anything runs: no silent skips.
    need "$PYTHON" "set PYTHON to an interpreter with numpy"
    local t
    for t in "${targets[@]}"; do
        case $t in
        host) need "$HOST_CC" "host C compiler; set CC" ;;
        aarch64) need aarch64-linux-gnu-gcc "apt install gcc-aarch64-linux-gnu"
                 need "$QEMU_AARCH64" "apt install qemu-user" ;;
        armv7) need arm-linux-gnueabihf-gcc "apt install gcc-arm-linux-gnueabihf"
               need "$QEMU_ARM" "apt install qemu-user" ;;
        esac
    done

    mkdir -p "$build"
    EDGESDK_NATIVE=0 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
        "$PYTHON" "$here/gen_vectors.py" "$build/vectors.bin" || die "gen_vectors.py failed"
    for t in "${targets[@]}"; do "run_$t"; done
    if [ $failures != 0 ]; then
        echo "run.sh: $failures target(s) FAILED"
        exit 1
    fi
    echo "run.sh: all targets passed (${targets[*]})"
}

main "$@"
