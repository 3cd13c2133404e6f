#!/usr/bin/env bash
# C unit test of the codec kernels against reference vectors from the numpy implementation.
#
#   bash native/tests/run.sh [TARGET...]      (targets: host aarch64 armv7 sanitize all;
#                                             default: all)
#
#   host      every ISA build of this machine's architecture (x86: sse2, avx2, avx512,
#             avx512vbmi2), run natively; test_kernels skips (and says so) builds this CPU
#             cannot run
#   aarch64   aarch64-linux-gnu-gcc, run under qemu-aarch64 (NEON is baseline)
#   armv7     arm-linux-gnueabihf-gcc -march=armv7-a -mfpu=neon -mfloat-abi=hard,
#             run under qemu-arm; also the run with a 32-bit size_t (es_packed_size limits)
#   sanitize  the host builds again with AddressSanitizer and UndefinedBehaviorSanitizer
#             (plus float-cast-overflow), run natively; any report fails the target
#   ubsan-armv7  the armv7 build with UBSan (static), under qemu-arm: undefined behaviour
#             that only a 32-bit size_t and long exposes (ASan does not run in qemu-user)
#   all       host aarch64 armv7 sanitize ubsan-armv7
#
# Debian/Ubuntu packages: gcc gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user;
# sanitize needs gcc's libasan and libubsan (libgcc-N-dev, normally installed with gcc).
# A requested target whose toolchain or emulator is missing is an error, never a skip.
# Environment: PYTHON (default python3; needs numpy), CC (host compiler, default gcc; also
# the sanitizer build's, so CC=clang works with clang's runtimes), QEMU_AARCH64 / QEMU_ARM
# (emulators, default qemu-aarch64 / qemu-arm).
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
# Sanitized build: -O1 -g for readable reports (after CFLAGS' -O3, so it wins);
# -fno-sanitize-recover makes every UBSan report fatal, like ASan's.
# shellcheck disable=SC2054 # the commas separate sanitizers within one flag
SAN_FLAGS=(-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined,float-cast-overflow
    -fno-sanitize-recover=all)
# shellcheck disable=SC2054
UBSAN_FLAGS=(-O1 -g -fsanitize=undefined,float-cast-overflow -fno-sanitize-recover=all)

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
        # shellcheck disable=SC2086
        flag_ok $avx512 -mavx512vbmi2 &&
            echo "es_kernels_avx512vbmi2:avx512vbmi2:$avx512 -mavx512vbmi2 -mprefer-vector-width=512"
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
    es_kernels_avx512vbmi2) echo -DES_HAVE_AVX512VBMI2 ;;
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
last_failed= # the target of the last failure

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
        failures=$((failures + 1)) last_failed=$target
    elif [ -n "$want_isas" ] && ! grep -qx "tested ISA tables: $want_isas" "$log"; then
        echo "== $target: FAILED (expected 'tested ISA tables: $want_isas')"
        failures=$((failures + 1)) last_failed=$target
    else
        echo "== $target: ok"
    fi
}

# require_line TARGET LINE: the test log of TARGET has LINE exactly. Checked only if the
# run itself passed (the last failure is not TARGET's), so a target counts once.
require_line() {
    [ "$last_failed" != "$1" ] || return 0
    if ! grep -qxF "$2" "$build/$1/test.log"; then
        last_failed=$1
        echo "== $1: FAILED (expected the line '$2')"
        failures=$((failures + 1))
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
    # The packed-size overflow checks only bite with a 32-bit size_t: this run must do them.
    require_line armv7 "packed-size limit checks ran with a 32-bit size_t"
}

run_sanitize() {
    mapfile -t variants < <(host_variants)
    build_target sanitize "$HOST_CC" "${SAN_FLAGS[*]}" "" "${variants[@]}"
    assert_sanitized sanitize __asan_init __ubsan_handle
    check_sanitized sanitize "$build/sanitize/test_kernels"
}

run_ubsan_armv7() {
    local cc=arm-linux-gnueabihf-gcc arch="${ARMV7_FLAGS[*]} ${UBSAN_FLAGS[*]}"
    build_target ubsan-armv7 "$cc" "$arch" "-static" "es_kernels_baseline:neon:"
    assert_sanitized ubsan-armv7 __ubsan_handle
    check_sanitized ubsan-armv7 "$QEMU_ARM" -cpu cortex-a7 "$build/ubsan-armv7/test_kernels"
    require_line ubsan-armv7 "packed-size limit checks ran with a 32-bit size_t"
}

# The sanitizer runtimes link and run (gcc ships them in libgcc-N-dev, which distributions
# sometimes split off); checked up front so that a missing library is not a test failure.
sanitizers_ok() {
    local probe="$build/sanitize-probe"
    mkdir -p "$build"
    echo 'int main(void) { return 0; }' |
        "$HOST_CC" "${SAN_FLAGS[@]}" -x c - -o "$probe" >/dev/null 2>&1 && "$probe"
}

# assert_sanitized TARGET SYMBOL...: the test binary of TARGET references every runtime
# SYMBOL, i.e. it really is instrumented.
assert_sanitized() {
    local target=$1 bin="$build/$1/test_kernels" syms sym
    shift
    syms=$(nm "$bin" 2>/dev/null) || die "$target: nm failed on $bin"
    for sym in "$@"; do
        grep -q "$sym" <<<"$syms" || die "$target: test_kernels is not instrumented (no $sym)"
    done
    echo "$target: test_kernels instrumented ($*)"
}

# check_sanitized TARGET CMD...: check_run with every sanitizer report fatal.
check_sanitized() {
    local target=$1
    shift
    # halt_on_error: stop at the first report; detect_leaks: the test frees everything.
    ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=0 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        check_run "$target" "" "$@"
    # A report ends the run early, so check_run has failed it already; this catches one
    # printed by a runtime that was told (through the environment) to carry on.
    if [ "$last_failed" != "$target" ] &&
        grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$build/$target/test.log"; then
        echo "== $target: FAILED (sanitizer report above)"
        failures=$((failures + 1)) last_failed=$target
    fi
}

main() {
    local targets=() arg
    [ $# -gt 0 ] || set -- all
    for arg in "$@"; do
        case "$arg" in
        host | aarch64 | armv7 | sanitize | ubsan-armv7) targets+=("$arg") ;;
        all) targets+=(host aarch64 armv7 sanitize ubsan-armv7) ;;
        *) die "unknown target '$arg' (host, aarch64, armv7, sanitize, ubsan-armv7 or all)" ;;
        esac
    done
    # Every requested toolchain must exist before anything runs: no silent skips.
    need "$PYTHON" "set PYTHON to an interpreter with numpy"
    local t
    for t in "${targets[@]}"; do
        case $t in
        host) need "$HOST_CC" "host C compiler; set CC" ;;
        aarch64) need aarch64-linux-gnu-gcc "apt install gcc-aarch64-linux-gnu"
                 need "$QEMU_AARCH64" "apt install qemu-user" ;;
        armv7 | ubsan-armv7) need arm-linux-gnueabihf-gcc "apt install gcc-arm-linux-gnueabihf"
                             need "$QEMU_ARM" "apt install qemu-user" ;;
        sanitize) need "$HOST_CC" "host C compiler; set CC"
                  sanitizers_ok || die "$HOST_CC cannot build with ${SAN_FLAGS[*]} (apt install \
libgcc-$("$HOST_CC" -dumpversion 2>/dev/null | cut -d. -f1)-dev for libasan and libubsan)" ;;
        esac
    done

    mkdir -p "$build"
    EDGESDK_NATIVE=0 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
        "$PYTHON" "$here/gen_vectors.py" "$build/vectors.bin" || die "gen_vectors.py failed"
    for t in "${targets[@]}"; do "run_${t//-/_}"; done
    if [ $failures != 0 ]; then
        echo "run.sh: $failures target(s) FAILED"
        exit 1
    fi
    echo "run.sh: all targets passed (${targets[*]})"
}

main "$@"
